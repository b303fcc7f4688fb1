"""Django's ASGI handler, with its middleware chain and views run synchronously in one thread hop.

Every HTTP view here is synchronous, and so are some of the middlewares (ours, WhiteNoise's). Loaded
in async mode, as Django's ``ASGIHandler`` does, the chain switches between the event loop and the
request's thread at every boundary between a sync and an async middleware, for the ``process_request``
and ``process_response`` halves of every ``MiddlewareMixin`` run in async mode, for every
``process_view`` and for the view itself: 20 ``sync_to_async`` and 1 ``async_to_sync`` for a submit,
each a wake-up of another thread. This handler loads the chain in sync mode and enters it once, with
``sync_to_async(thread_sensitive=True)`` as Django does for a sync view. Reading the body, sending the
response (streamed downloads included: ``algorithms.downloads`` hands Django an async iterator) and
the request signals stay asynchronous, as in Django's own handler.
"""
from __future__ import annotations

import django
from asgiref.sync import sync_to_async
from django.core.handlers import base
from django.core.handlers.asgi import ASGIHandler
from django.http import HttpRequest, HttpResponseBase


class SyncChainASGIHandler(ASGIHandler):
    def __init__(self) -> None:
        base.BaseHandler.__init__(self)
        self.load_middleware(is_async=False)

    async def get_response_async(self, request: HttpRequest) -> HttpResponseBase:
        return await sync_to_async(self.get_response, thread_sensitive=True)(request)


def get_asgi_application() -> SyncChainASGIHandler:
    """``django.core.asgi.get_asgi_application`` with this handler."""
    django.setup(set_prefix=False)
    return SyncChainASGIHandler()
