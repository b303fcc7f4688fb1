"""Request bodies that take their own fields and nothing else (``NoUnknownKeys``), shared by the apps' API
serializers, and how the OpenAPI schema shows them."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from drf_spectacular.extensions import OpenApiSerializerExtension
from rest_framework import serializers

from jobs.jsonsafe import without_surrogates


class NoUnknownKeys(serializers.Serializer):
    """A request body that takes its own fields and nothing else: any other key is a 400 naming it (beside
    the other fields' errors), where DRF would drop it, so that a typo (``prams``, ``max_retry``) never
    runs a task with the defaults. ``takes`` says whose keys the message lists. In the schema the body has
    ``additionalProperties: false`` (``NoUnknownKeysSchema``)."""

    takes = "this body"
    hints: dict[str, str] = {}  # a key often sent by mistake → what to do instead (said in place of the list)
    # Sent beside the fields by the browsable API's HTML forms (DEBUG), not by a client of the API.
    FORM_KEYS = frozenset({"csrfmiddlewaretoken"})

    def to_internal_value(self, data: Any) -> Any:
        unknown: dict[str, list[str]] = {}
        if isinstance(data, Mapping):
            # a read-only field (simplejwt's ``access`` on a refresh) is one DRF would drop: not taken either
            takes = [name for name, field in self.fields.items() if not field.read_only]
            reason = f"unknown field ({self.takes} takes {', '.join(takes)})"
            # a key that is no valid Unicode (a lone surrogate) is named escaped: the answer must be UTF-8
            unknown = {without_surrogates(str(key)): [self.hints.get(key, reason)] for key in data
                       if key not in takes and key not in self.FORM_KEYS}
        try:
            value = super().to_internal_value(data)
        except serializers.ValidationError as exc:
            if unknown and isinstance(exc.detail, dict):
                raise serializers.ValidationError({**exc.detail, **unknown}) from None
            raise
        if unknown:
            raise serializers.ValidationError(unknown)
        return value


class NoUnknownKeysSchema(OpenApiSerializerExtension):
    """``NoUnknownKeys`` bodies in the schema: ``additionalProperties: false`` (generated clients and the
    fuzzer learn that another key is refused)."""

    target_class = NoUnknownKeys
    match_subclasses = True

    def map_serializer(self, auto_schema: Any, direction: str) -> dict[str, Any]:
        schema = auto_schema._map_serializer(self.target, direction, bypass_extensions=True)
        if direction == "request":
            schema["additionalProperties"] = False
        return schema
