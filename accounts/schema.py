from drf_spectacular.extensions import OpenApiAuthenticationExtension


class ApiKeyScheme(OpenApiAuthenticationExtension):
    target_class = "accounts.authentication.ApiKeyAuthentication"
    name = "apiKeyAuth"

    def get_security_definition(self, auto_schema):  # type: ignore[no-untyped-def]
        return {
            "type": "apiKey", "in": "header", "name": "X-API-Key",
            "description": "A service account key (`cvk_…`) from `POST /api/v1/auth/keys/`; scopes "
                           "`read` (GET), `submit` (other writes), `operate` (operator actions).",
        }
