"""Django's ASGI handler, with its middleware chain and views run synchronously in one thread hop, in
threads that are used again by later requests.

Every HTTP view here is synchronous, and so are some of the middlewares (ours, WhiteNoise's). Loaded
in async mode, as Django's ``ASGIHandler`` does, the chain switches between the event loop and the
request's thread at every boundary between a sync and an async middleware, for the ``process_request``
and ``process_response`` halves of every ``MiddlewareMixin`` run in async mode, for every
``process_view`` and for the view itself: 20 ``sync_to_async`` and 1 ``async_to_sync`` for a submit,
each a wake-up of another thread. This handler loads the chain in sync mode and enters it once, with
``sync_to_async(thread_sensitive=True)`` as Django does for a sync view. Reading the body, sending the
response (streamed downloads included: ``algorithms.downloads`` hands Django an async iterator) and
the request signals stay asynchronous, as in Django's own handler.

Django runs each request's synchronous parts (the ``request_started`` signal, the chain, the response's
``close``) in one thread of the request's own, a new one per request: everything a library keeps per
thread was built again for every request (Celery's result backend and its ``AsyncResult`` on every
send, Django's database wrapper, the thread itself). Here each request still gets a thread to itself
for its whole life (asgiref's ``ThreadSensitiveContext`` with an executor of one thread, the pooled
use asgiref documents), taken from the threads earlier requests left idle; more are started while
more requests run at once, and up to ``IDLE_THREADS`` are kept. Reusing a thread between requests is
what every threaded WSGI server does; Django closes or returns the request's database connection at
``request_finished`` as before. A thread still running a request's work when the request ends (its
client went away and the view was abandoned, which asgiref allows) is not used again: it finishes that
work alone and stops.

The handler also counts the HTTP requests in flight, for a graceful stop under daphne
(``drain_on_sigterm``): Twisted's SIGTERM handler stops the reactor at once, and daphne's "before
shutdown" trigger then kills every application instance still running. A request is in flight from its
scope's start until ``handle`` returns: its response sent (a streamed download's last chunk included) or
the request ended otherwise (an error, a client that hung up, a cancelled instance).
"""
from __future__ import annotations

import logging
import signal
from concurrent.futures import Future, ThreadPoolExecutor
from types import FrameType
from typing import Any

import django
from asgiref.sync import ThreadSensitiveContext, sync_to_async
from django.core.handlers import base
from django.core.handlers.asgi import ASGIHandler
from django.http import HttpRequest, HttpResponseBase

IDLE_THREADS = 32
DRAIN_POLL_SECONDS = 0.1

log = logging.getLogger(__name__)


class RequestThread(ThreadPoolExecutor):
    """One thread, for one request at a time; ``idle`` once all the work given to it is done."""

    def __init__(self) -> None:
        super().__init__(max_workers=1, thread_name_prefix="request")
        self._last: Future[Any] | None = None

    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> Future[Any]:
        self._last = super().submit(fn, *args, **kwargs)
        return self._last

    @property
    def idle(self) -> bool:
        return self._last is None or self._last.done()  # one worker: the last item is done after the rest


class SyncChainASGIHandler(ASGIHandler):
    def __init__(self) -> None:
        base.BaseHandler.__init__(self)
        self.load_middleware(is_async=False)
        self._idle: list[RequestThread] = []  # touched only on the event loop: no lock
        self.in_flight = 0  # HTTP requests started and not yet ended; also only on the event loop

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            raise ValueError(f"Django can only handle ASGI/HTTP connections, not {scope['type']}.")
        thread = self._idle.pop() if self._idle else RequestThread()
        self.in_flight += 1
        try:
            async with ThreadSensitiveContext(executor=thread):
                await self.handle(scope, receive, send)
        finally:
            self.in_flight -= 1
            self.park(thread)

    def park(self, thread: RequestThread) -> None:
        """After its request: keep the thread for the next one, or let it stop when its work is done."""
        if thread.idle and len(self._idle) < IDLE_THREADS:
            self._idle.append(thread)
        else:
            thread.shutdown(wait=False)

    async def get_response_async(self, request: HttpRequest) -> HttpResponseBase:
        return await sync_to_async(self.get_response, thread_sensitive=True)(request)


def get_asgi_application() -> SyncChainASGIHandler:
    """``django.core.asgi.get_asgi_application`` with this handler."""
    django.setup(set_prefix=False)
    return SyncChainASGIHandler()


def drain_on_sigterm(handler: SyncChainASGIHandler, grace: float) -> None:
    """Under daphne: on the first SIGTERM keep serving until ``handler`` has no request in flight and
    Twisted has written out every response's bytes, at most ``grace`` seconds, then stop the reactor as
    Twisted's own handler does at once (daphne then closes WebSockets, which are not waited for: their
    clients reconnect). Readiness answers 503 meanwhile (``observability.health.shutting_down``). A second
    SIGTERM, or SIGINT (Twisted's handler, left as it is), stops at once.

    Call it only once ``daphne.server`` has installed its asyncio reactor (importing ``twisted.internet
    .reactor`` first would install another). Twisted installs its signal handlers in the "during startup"
    phase of ``reactor.run``; "after startup" (``callWhenRunning``) this replaces its SIGTERM handler, and
    only that one: a daphne run with ``signal_handlers=False`` (daphne.testing) keeps whatever it had.
    """
    from twisted.internet import reactor

    from observability import health

    draining = False

    def stop_when_idle(deadline: float) -> None:
        if not reactor.running:
            return
        # getWriters(): the connections whose bytes Twisted still holds (a slow client's last chunks);
        # stopping the reactor drops them, the kernel's socket buffers are sent after the exit.
        idle = handler.in_flight == 0 and not reactor.getWriters()
        if idle or reactor.seconds() >= deadline:
            if idle:
                log.info("SIGTERM: no request in flight; stopping")
            else:
                log.warning("SIGTERM: %d request(s) still in flight after %gs; stopping", handler.in_flight, grace)
            reactor.stop()
        else:
            reactor.callLater(DRAIN_POLL_SECONDS, stop_when_idle, deadline)

    def start() -> None:  # on the reactor's thread
        health.shutting_down.set()
        log.info("SIGTERM: draining %d request(s) in flight, at most %gs", handler.in_flight, grace)
        stop_when_idle(reactor.seconds() + grace)

    def on_sigterm(number: int, frame: FrameType | None) -> None:
        nonlocal draining
        if draining:
            reactor.sigTerm(number, frame)  # the second one: Twisted's handler, stop now
            return
        draining = True
        reactor.callFromThread(start)  # as Twisted's handler does: from a signal handler, via the waker

    def install() -> None:
        if signal.getsignal(signal.SIGTERM) == reactor.sigTerm:
            signal.signal(signal.SIGTERM, on_sigterm)

    reactor.callWhenRunning(install)
