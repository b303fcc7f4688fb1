from drf_spectacular.extensions import OpenApiAuthenticationExtension


def scheme_description() -> str:
    """The API key scheme's description: how a key is sent, and every scope (``accounts.models.Scope``)."""
    from accounts.models import Scope

    scopes = "; ".join(f"`{value}`: {label.split(': ', 1)[-1]}" for value, label in Scope.choices)
    return ("A service account key (`cvk_…`) from `POST /api/v1/auth/keys/` (made with a JWT login: "
            "`/auth/keys/` refuses API keys), sent as `X-API-Key: cvk_…` or as `Authorization: Api-Key cvk_…`. "
            f"Scopes: {scopes}. Each operation names the scope a key needs for it in `x-required-scope` and in "
            "its description (`x-required-scopes-for-fields`: body fields that need one more scope when given); "
            "operations marked `x-operators-only` also need the key's user to be an operator.")


class ApiKeyScheme(OpenApiAuthenticationExtension):
    target_class = "accounts.authentication.ApiKeyAuthentication"
    name = "apiKeyAuth"

    def get_security_definition(self, auto_schema):  # type: ignore[no-untyped-def]
        return {"type": "apiKey", "in": "header", "name": "X-API-Key", "description": scheme_description()}
