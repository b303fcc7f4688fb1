from __future__ import annotations

from typing import Any

from django.apps import AppConfig
from django.core import checks


class WebhooksConfig(AppConfig):
    name = "webhooks"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        checks.register(check_settings, checks.Tags.security)


def check_settings(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """Allowed private networks are for tests and closed networks: say so loudly outside DEBUG."""
    import ipaddress

    from django.conf import settings

    out: list[checks.CheckMessage] = []
    for cidr in settings.WEBHOOKS["ALLOWED_NETWORKS"]:  # from the environment: CIDRs (config.env refuses others)
        try:
            net = ipaddress.ip_network(cidr, strict=False)
        except ValueError:  # a settings module of one's own that sets WEBHOOKS
            out.append(checks.Error(f"WEBHOOK_ALLOWED_NETWORKS: {cidr!r} is not a CIDR", id="webhooks.E001"))
            continue
        if not settings.DEBUG and (net.is_loopback or net.is_link_local):
            out.append(checks.Warning(
                f"WEBHOOK_ALLOWED_NETWORKS lets webhooks reach {net} (loopback/link-local)",
                hint="Only for tests; receivers on this host or cloud metadata become reachable.",
                id="webhooks.W001"))
    if not settings.WEBHOOKS["RETRY_SCHEDULE"]:
        out.append(checks.Error("WEBHOOK_RETRY_SCHEDULE is empty", id="webhooks.E002"))
    if settings.WEBHOOKS["TOTAL_TIMEOUT"] <= 0:
        out.append(checks.Error("WEBHOOK_TOTAL_TIMEOUT must be positive", id="webhooks.E003"))
    return out
