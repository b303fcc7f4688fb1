"""ASGI entry point: HTTP through Django, WebSocket through Channels (``jobs.routing``).

WebSocket authentication is the consumers' job (a JWT in ``?token=`` or the first message). No
cookie session is read, so a foreign page cannot ride a browser's login (cross-site WebSocket
hijacking) and no Origin check is needed; non-browser clients (the CLI) send no Origin at all.

Under daphne a SIGTERM drains the HTTP requests in flight first, at most ``WEB_SHUTDOWN_GRACE_SECONDS``
(``config.handlers.drain_on_sigterm``); imported anywhere else (tests, management commands) nothing changes.
"""
import os
import sys

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

from config.env import one_line_configuration_errors  # noqa: E402

one_line_configuration_errors()

from config.handlers import get_asgi_application  # noqa: E402 - Django's, with a sync middleware chain

django_asgi_app = get_asgi_application()

if "daphne.server" in sys.modules:  # daphne's CLI imported it, and with it its Twisted reactor, before us
    from django.conf import settings

    from config.handlers import drain_on_sigterm

    drain_on_sigterm(django_asgi_app, settings.WEB_SHUTDOWN_GRACE_SECONDS)

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402

from jobs.routing import websocket_urlpatterns  # noqa: E402

application = ProtocolTypeRouter({
    "http": django_asgi_app,
    "websocket": URLRouter(websocket_urlpatterns),
})

from config.startup import freeze_imported_objects  # noqa: E402

freeze_imported_objects()
