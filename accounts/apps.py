from django.apps import AppConfig


class AccountsConfig(AppConfig):
    """Service accounts: API keys as an alternative to JWT for machine clients."""

    name = "accounts"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from accounts import schema  # noqa: F401  registers the API key scheme with drf-spectacular
