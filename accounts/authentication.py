"""``X-API-Key: cvk_…`` (or ``Authorization: Api-Key cvk_…``) for machine clients.

Scopes are enforced here, the one place every key-authenticated request passes, so no view can forget
them: GET/HEAD/OPTIONS need ``read``, other methods ``submit``, and views whose permissions include
``IsOperator`` for the request (or that name ``api_key_scope``) need ``operate``; views that name an
``api_key_write_scope`` need it for their other methods instead of ``submit`` (webhook management:
``webhooks``, so that a key made to submit cannot redirect the owner's webhooks or mint their
secrets). A key without ``operate`` never acts as an operator: it sees and touches only its owner's
own tasks. Views that name ``api_key_refused`` take no API key at all (the reason is the 403's message), and
``api_key_field_scopes`` names, per action, body fields that need one more scope (``require_key_scope``).
These same functions publish each operation's scope in the OpenAPI schema (config/schema.py).
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
    if method in SAFE_METHODS:
        return "read"
    return getattr(view, "api_key_write_scope", None) or "submit"


def refused_reason(view: Any) -> str | None:
    """Why the view takes no API key at all (``api_key_refused``), or None when it takes one."""
    return getattr(view, "api_key_refused", None)


def field_scopes(view: Any) -> dict[str, str]:
    """Body fields of the view's action that need one more scope of an API key when given (``webhook_url``:
    ``webhooks``), from the view's ``api_key_field_scopes``."""
    return dict((getattr(view, "api_key_field_scopes", None) or {}).get(getattr(view, "action", None), {}))


def require_key_scope(request: Any, scope: str, *, because: str) -> None:
    """For what the body asks, which the method cannot tell: a submit's ``webhook_url`` makes a webhook, so
    a key needs ``webhooks`` for it too (a ``submit``-only key sent its tasks' events anywhere)."""
    from accounts.models import ApiKey

    key = getattr(request, "auth", None)
    if isinstance(key, ApiKey) and scope not in key.scopes:
        raise exceptions.PermissionDenied(f"this API key lacks the {scope!r} scope ({because})")


class ApiKeyAuthentication(authentication.BaseAuthentication):
    def authenticate(self, request: Any) -> tuple[Any, Any] | None:
        raw, header = request.headers.get(HEADER), HEADER
        if not raw:
            parts = request.headers.get("Authorization", "").split()
            if len(parts) != 2 or parts[0].lower() != "api-key":
                return None
            raw, header = parts[1], "Authorization"
        # Imported here, not at the top: DRF loads this class while apps are still loading.
        from accounts import services
        from accounts.models import Scope
        from config.errors import refuse_nul

        refuse_nul(raw, field=header)  # the prefix goes into a query
        key = services.verify(raw.strip())
        if key is None:
            raise exceptions.AuthenticationFailed("invalid, expired or revoked API key")
        view = (getattr(request, "parser_context", None) or {}).get("view")
        refused = refused_reason(view)
        if refused:
            raise exceptions.PermissionDenied(refused)
        scope = required_scope(request.method, view)
        if scope not in key.scopes:
            raise exceptions.PermissionDenied(f"this API key lacks the {scope!r} scope")
        # Without ``operate`` the key acts on its owner's own tasks only (config.permissions.is_operator).
        key.user._conveyor_without_operate = Scope.OPERATE not in key.scopes
        return key.user, key

    def authenticate_header(self, request: Any) -> str:
        return 'Api-Key realm="api"'
