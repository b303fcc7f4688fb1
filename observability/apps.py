from django.apps import AppConfig


class ObservabilityConfig(AppConfig):
    """Readiness checks, Prometheus metrics, structured logs and request ids: the operator's view."""

    name = "observability"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from observability import metrics, worker

        metrics.register()
        worker.connect()
