"""The API's JSON parser: DRF's, with a body nested too deep for Python's parser a 400 like any other
malformed body (DRF turns only ``ValueError`` into ``ParseError``; ``RecursionError`` was a 500)."""
from __future__ import annotations

from typing import Any

from rest_framework import parsers
from rest_framework.exceptions import ParseError


class JSONParser(parsers.JSONParser):
    def parse(self, stream: Any, media_type: str | None = None, parser_context: dict[str, Any] | None = None) -> Any:
        try:
            return super().parse(stream, media_type, parser_context)
        except RecursionError:
            raise ParseError("JSON parse error - nested too deeply") from None
