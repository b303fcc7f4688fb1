from django.apps import AppConfig


class AlgorithmsConfig(AppConfig):
    name = "algorithms"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from algorithms import daphne_flow, registry, signals  # noqa: F401  (signals: connected on import)

        registry.load()
        daphne_flow.install()  # only does something inside a daphne process
        import algorithms.remote.schemes  # noqa: F401  (remote services join the registry as a source)
