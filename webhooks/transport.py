"""One HTTP POST to a receiver, with the SSRF guard at connect time (healthchecks ``opensocket``, saleor
``requests_hardened``).

The guard resolves the host itself, refuses the request if any address is loopback, private, link-local
(169.254.0.0/16, cloud metadata), site-local, multicast, reserved or otherwise not global, or an IPv6
address carrying such an IPv4 one (mapped, 6to4, Teredo), unless it lies in
``WEBHOOKS["ALLOWED_NETWORKS"]``, and then connects to the address it checked, so a DNS answer that
changes between check and connect (rebinding) cannot slip through. Redirects are never followed,
proxies from the environment are ignored, and at most ``RESPONSE_MAX_BYTES`` of the body are read.
The connect and read timeouts bound each socket operation; ``TOTAL_TIMEOUT`` bounds the whole attempt
(connecting, waiting for the response, reading the body), so a receiver trickling a byte every few
seconds cannot hold a worker slot past it. ``send()`` never raises: every failure, including a URL
httpx refuses, is returned as an ``AttemptResult``.
"""
from __future__ import annotations

import ipaddress
import logging
import os
import re
import socket
import ssl
import threading
import time
import typing
from contextvars import ContextVar
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import httpcore
import httpx
from django.conf import settings

from config.errors import InvalidInput

log = logging.getLogger(__name__)
USER_AGENT = "Conveyor-Webhooks/1.0"
# httpx logs every request at INFO; the DeliveryAttempt row is the log. Explicit LOGGING config still wins.
if logging.getLogger("httpx").level == logging.NOTSET:
    logging.getLogger("httpx").setLevel(logging.WARNING)
_KEEP_HEADERS = ("content-type", "retry-after", "content-length", "server")


class AddressRefused(Exception):
    """The receiver's host resolves to an address deliveries may not reach."""


def _allowed_networks() -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    return [ipaddress.ip_network(cidr, strict=False) for cidr in settings.WEBHOOKS["ALLOWED_NETWORKS"]]


def refusal(address: str) -> str | None:
    """Why ``address`` may not be reached, or None if it may. An IPv6 address that carries IPv4 ones (6to4
    ``2002::/16``, Teredo's server and client) is refused if any of those is: ``2002:7f00:1::`` embeds
    127.0.0.1, ``2002:a9fe:a9fe::`` the cloud metadata address."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    allowed = _allowed_networks()
    if any(ip in net for net in allowed):
        return None
    reason = _not_public(ip)
    if reason or not isinstance(ip, ipaddress.IPv6Address):
        return reason
    for inner in (ip.sixtofour, *(ip.teredo or ())):
        if inner is None or any(inner in net for net in allowed):
            continue
        inner_reason = _not_public(inner)
        if inner_reason:
            return f"{ip} carries {inner}: {inner_reason}"
    return None


def _not_public(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
    for kind in ("loopback", "link_local", "site_local", "multicast", "private", "reserved", "unspecified"):
        if getattr(ip, f"is_{kind}", False):  # ``is_site_local`` (fec0::/10, deprecated) is IPv6's only
            return f"{ip} is a {kind.replace('_', '-')} address"
    if not ip.is_global:
        return f"{ip} is not a public address"
    return None


def resolve_checked(host: str, port: int) -> list[str]:
    """Every address of ``host``; raises ``AddressRefused`` if any of them is refused."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
    for address in addresses:
        reason = refusal(address)
        if reason:
            raise AddressRefused(reason if host.strip("[]") == address else f"{host} resolves to {address}: {reason}")
    return addresses


_LABEL = re.compile(r"(?!-)[a-z0-9_-]{1,63}(?<!-)", re.IGNORECASE)


def valid_host(host: str) -> bool:
    """An IP address, or a DNS name of letters, digits, ``-`` and ``_`` (a single label too: the service
    names of Docker Compose and Kubernetes are ``receiver``, not ``receiver.example.com``)."""
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        pass
    labels = host[:-1].split(".") if host.endswith(".") else host.split(".")
    return 0 < len(host) <= 253 and all(_LABEL.fullmatch(label) for label in labels)


def validate_url(url: str, *, field_name: str = "url") -> str:
    """Creation-time check, the only one a URL gets (the API's field is a plain string): http(s), a valid
    host name or IP address (single labels included), a port in 1-65535, a host httpx can send to, and
    addresses the guard allows (checked again at delivery).

    The URL is parsed by httpx itself: Python's IDNA 2003 codec (``urlsplit``, ``getaddrinfo``) accepts
    hosts that httpx's IDNA 2008 rules refuse (``☃.net``, a zero-width joiner inside a name, fullwidth
    digits), and a delivery to those could never be sent. The host resolved is the one httpx connects to.
    """
    def invalid(message: str) -> InvalidInput:
        return InvalidInput(f"{field_name}: {message}", fields={field_name: [message]})

    try:
        parts = urlsplit(url)
    except ValueError as exc:  # "Invalid IPv6 URL": an unclosed "[", a bracketed host that is no IPv6 address
        raise invalid(f"not a URL deliveries can be sent to ({exc})") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise invalid("only http and https URLs with a host")
    if parts.username or parts.password:
        raise invalid("credentials in the URL are not allowed")
    try:
        target = httpx.Request("POST", url).url
        host = target.raw_host.decode("ascii")
    except (httpx.InvalidURL, ValueError) as exc:  # idna's errors are UnicodeErrors
        raise invalid(f"not a URL deliveries can be sent to ({exc})") from None
    if not valid_host(host):
        raise invalid(f"{host!r} is not a valid host name or IP address")
    if target.port is not None and not 1 <= target.port <= 65535:
        raise invalid(f"port {target.port} is out of range (1-65535)")
    try:
        resolve_checked(host, target.port or (443 if target.scheme == "https" else 80))
    except AddressRefused as exc:
        raise invalid(f"{exc}; deliveries reach only public addresses, unless the network is listed in the "
                      "server's WEBHOOK_ALLOWED_NETWORKS (a receiver on a private network or this host)") from None
    except (OSError, UnicodeError, ValueError):
        raise invalid("the host does not resolve") from None
    return url


_deadline: ContextVar[float | None] = ContextVar("webhook_attempt_deadline", default=None)


def _time_left(timeout: float | None, expired: type[Exception]) -> float | None:
    """``timeout`` cut to what is left of this attempt's ``TOTAL_TIMEOUT``; ``expired`` once none is."""
    deadline = _deadline.get()
    if deadline is None:
        return timeout
    left = deadline - time.monotonic()
    if left <= 0:
        raise expired("the attempt's total timeout has passed")
    return left if timeout is None else min(timeout, left)


class _DeadlineStream(httpcore.NetworkStream):
    """Every socket operation waits at most until the attempt's deadline (per-read timeouts alone let a
    receiver sending a byte every few seconds keep the attempt going for hours)."""

    def __init__(self, stream: httpcore.NetworkStream) -> None:
        self._stream = stream

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._stream.read(max_bytes, _time_left(timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._stream.write(buffer, _time_left(timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self._stream.close()

    def start_tls(self, ssl_context: ssl.SSLContext, server_hostname: str | None = None,
                  timeout: float | None = None) -> httpcore.NetworkStream:
        timeout = _time_left(timeout, httpcore.ConnectTimeout)
        return _DeadlineStream(self._stream.start_tls(ssl_context, server_hostname, timeout))

    def get_extra_info(self, info: str) -> typing.Any:
        return self._stream.get_extra_info(info)


class _GuardedBackend(httpcore.SyncBackend):
    def connect_tcp(self, host: str, port: int, timeout: float | None = None,
                    local_address: str | None = None,
                    socket_options: typing.Iterable[typing.Any] | None = None) -> httpcore.NetworkStream:
        try:
            addresses = resolve_checked(host, port)
        except socket.gaierror as exc:
            raise httpcore.ConnectError(f"cannot resolve {host}: {exc}") from exc
        last: Exception | None = None
        for address in addresses:  # the checked addresses, never a second lookup
            try:
                stream = super().connect_tcp(address, port, _time_left(timeout, httpcore.ConnectTimeout),
                                             local_address, socket_options)
                return _DeadlineStream(stream)
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                last = exc
        assert last is not None
        raise last


class _GuardedTransport(httpx.HTTPTransport):
    def __init__(self) -> None:
        super().__init__(trust_env=False)
        # httpx does not expose the network backend; the pool below is what HTTPTransport builds,
        # with the guarded backend.
        self._pool = httpcore.ConnectionPool(ssl_context=httpx.create_ssl_context(trust_env=False),
                                             max_connections=50, max_keepalive_connections=20,
                                             keepalive_expiry=5.0, network_backend=_GuardedBackend())


_client_lock = threading.Lock()
_client: tuple[int, httpx.Client] | None = None


def client() -> httpx.Client:
    """One keep-alive client per process (created after fork; shared by a thread pool's threads)."""
    global _client
    with _client_lock:
        if _client is None or _client[0] != os.getpid():
            conf = settings.WEBHOOKS
            timeout = httpx.Timeout(conf["READ_TIMEOUT"], connect=conf["CONNECT_TIMEOUT"])
            _client = (os.getpid(), httpx.Client(transport=_GuardedTransport(), timeout=timeout,
                                                 follow_redirects=False, trust_env=False))
        return _client[1]


@dataclass
class AttemptResult:
    status_code: int | None = None
    headers: dict[str, str] = field(default_factory=dict)
    body: str = ""
    duration_ms: int = 0
    error: str = ""
    transient: bool = False  # for errors without a response: worth trying again
    retry_after: str | None = None


def send(url: str, body: bytes, headers: dict[str, str]) -> AttemptResult:
    """POST ``body`` within ``TOTAL_TIMEOUT``; never raises."""
    started = time.monotonic()
    total = settings.WEBHOOKS["TOTAL_TIMEOUT"]
    result = AttemptResult()
    cap = settings.WEBHOOKS["RESPONSE_MAX_BYTES"]
    token = _deadline.set(started + total)
    try:
        # ``identity``: only an excerpt of the answer is kept, and a compressed one would be stored as binary.
        with client().stream("POST", url, content=body, headers={
            "content-type": "application/json", "user-agent": USER_AGENT, "accept-encoding": "identity", **headers,
        }) as response:
            result.status_code = response.status_code
            result.headers = {k: v for k, v in response.headers.items() if k.lower() in _KEEP_HEADERS}
            result.retry_after = response.headers.get("retry-after")
            chunks, size = [], 0
            for chunk in response.iter_raw():  # stop at the cap: a huge body must not fill memory
                chunks.append(chunk)
                size += len(chunk)
                if size >= cap:
                    break
            result.body = b"".join(chunks)[:cap].decode("utf-8", "replace")
    except AddressRefused as exc:
        result.error = f"refused: {exc}"
    except httpx.TimeoutException as exc:
        # After the status line the receiver has answered, and its status decides (the body is only kept
        # for the log); before it, nothing came back in time, and the attempt is tried again.
        late = f" after HTTP {result.status_code}, body incomplete" if result.status_code else ""
        if time.monotonic() - started >= total:
            result.error = f"timeout: no complete answer within {total:g} s (WEBHOOK_TOTAL_TIMEOUT){late}"
        else:
            result.error = f"timeout: {type(exc).__name__}{late}"
        result.transient = result.status_code is None
    except (httpx.TransportError, ssl.SSLError, OSError) as exc:
        result.error, result.transient = f"{type(exc).__name__}: {exc}"[:1000], True
    except (httpx.InvalidURL, UnicodeError) as exc:
        # A host httpx's IDNA 2008 rules refuse, stored before creation checked for it: never sendable.
        result.error = f"invalid URL: {exc}"[:1000]
    except httpx.HTTPError as exc:  # the rest of httpx's errors: trying again will not help
        result.error = f"{type(exc).__name__}: {exc}"[:1000]
    except Exception as exc:
        # Building or sending the request failed some other way: logged, and retried like a connection
        # error, so the delivery still moves on (retries, give-up, the endpoint's failure streak).
        log.exception("webhook request to %s could not be sent", urlsplit(url).hostname)
        result.error, result.transient = f"{type(exc).__name__}: {exc}"[:1000], True
    finally:
        _deadline.reset(token)
    result.duration_ms = int((time.monotonic() - started) * 1000)
    return result
