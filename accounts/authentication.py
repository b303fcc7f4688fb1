"""``X-API-Key: cvk_…`` (or ``Authorization: Api-Key cvk_…``) for machine clients.

Scopes are enforced here, the one place every key-authenticated request passes, so no view can forget
them: GET/HEAD/OPTIONS need ``read``, other methods ``submit``, and views whose permissions include
``IsOperator`` for the request (or that name ``api_key_scope``) need ``operate``.
"""
from __future__ import annotations

from typing import Any

from rest_framework import authentication, exceptions
from rest_framework.permissions import SAFE_METHODS

from config.permissions import IsOperator

HEADER = "X-API-Key"


def required_scope(method: str, view: Any) -> str:
    named = getattr(view, "api_key_scope", None)
    if named:
        return named
    # get_permissions(), not permission_classes: some views choose permissions per action.
    if view is not None and any(isinstance(p, IsOperator) for p in view.get_permissions()):
        return "operate"
    return "read" if method in SAFE_METHODS else "submit"


class ApiKeyAuthentication(authentication.BaseAuthentication):
    def authenticate(self, request: Any) -> tuple[Any, Any] | None:
        raw = request.headers.get(HEADER)
        if not raw:
            parts = request.headers.get("Authorization", "").split()
            if len(parts) != 2 or parts[0].lower() != "api-key":
                return None
            raw = parts[1]
        # Imported here, not at the top: DRF loads this class while apps are still loading.
        from accounts import services

        key = services.verify(raw.strip())
        if key is None:
            raise exceptions.AuthenticationFailed("invalid, expired or revoked API key")
        view = (getattr(request, "parser_context", None) or {}).get("view")
        scope = required_scope(request.method, view)
        if scope not in key.scopes:
            raise exceptions.PermissionDenied(f"this API key lacks the {scope!r} scope")
        return key.user, key

    def authenticate_header(self, request: Any) -> str:
        return 'Api-Key realm="api"'
