"""One HTTP POST to a receiver, with the SSRF guard at connect time (healthchecks ``opensocket``, saleor
``requests_hardened``).

The guard resolves the host itself, refuses the request if any address is loopback, private, link-local
(169.254.0.0/16, cloud metadata), multicast, reserved or otherwise not global, unless it lies in
``WEBHOOKS["ALLOWED_NETWORKS"]``, and then connects to the address it checked, so a DNS answer that
changes between check and connect (rebinding) cannot slip through. Redirects are never followed,
proxies from the environment are ignored, and at most ``RESPONSE_MAX_BYTES`` of the body are read.
``send()`` never raises for HTTP or network failures: it returns an ``AttemptResult``.
"""
from __future__ import annotations

import ipaddress
import logging
import os
import socket
import ssl
import threading
import time
import typing
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import httpcore
import httpx
from django.conf import settings

from config.errors import InvalidInput

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
    """Why ``address`` may not be reached, or None if it may."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if any(ip in net for net in _allowed_networks()):
        return None
    for kind in ("loopback", "link_local", "multicast", "private", "reserved", "unspecified"):
        if getattr(ip, f"is_{kind}"):
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
            raise AddressRefused(f"{host} resolves to {reason}")
    return addresses


def validate_url(url: str, *, field_name: str = "url") -> str:
    """Creation-time check: http(s), a host, and addresses the guard allows (checked again at delivery)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidInput(f"{field_name}: only http and https URLs with a host",
                           fields={field_name: ["only http and https URLs with a host"]})
    if parts.username or parts.password:
        raise InvalidInput(f"{field_name}: credentials in the URL are not allowed",
                           fields={field_name: ["credentials in the URL are not allowed"]})
    try:
        resolve_checked(parts.hostname, parts.port or (443 if parts.scheme == "https" else 80))
    except AddressRefused as exc:
        raise InvalidInput(f"{field_name}: {exc}", fields={field_name: [str(exc)]}) from None
    except (OSError, UnicodeError, ValueError):
        raise InvalidInput(f"{field_name}: the host does not resolve",
                           fields={field_name: ["the host does not resolve"]}) from None
    return url


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
                return super().connect_tcp(address, port, timeout, local_address, socket_options)
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
    """POST ``body``; never raises for network or HTTP failures."""
    started = time.monotonic()
    result = AttemptResult()
    cap = settings.WEBHOOKS["RESPONSE_MAX_BYTES"]
    try:
        with client().stream("POST", url, content=body, headers={
            "content-type": "application/json", "user-agent": USER_AGENT, **headers,
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
        result.error, result.transient = f"timeout: {type(exc).__name__}", True
    except (httpx.TransportError, ssl.SSLError, OSError) as exc:
        result.error, result.transient = f"{type(exc).__name__}: {exc}"[:1000], True
    except httpx.HTTPError as exc:  # invalid URL and the like: trying again will not help
        result.error = f"{type(exc).__name__}: {exc}"[:1000]
    result.duration_ms = int((time.monotonic() - started) * 1000)
    return result
