"""The REST side of the CLI: JWT login, refresh on 401, and the API's error shape as exceptions."""
from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx

from conveyor_cli import config


class CLIError(Exception):
    """Something to tell the user, with the process exit status to leave with."""

    def __init__(self, message: str, *, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class NotAvailable(CLIError):
    """The server has no such endpoint (an older or smaller deployment)."""


# Exit status for trouble on the way to or at the server (unreachable, overloaded, an odd reply),
# as opposed to 1: the request itself was refused (or, for watch, the task FAILED).
SERVER_TROUBLE = 6
# Worth asking again later: throttled, or a proxy or the server says it cannot answer right now.
RETRYABLE = {429, 502, 503, 504}
MAX_RETRY_AFTER = 60.0


class OutputClosed(Exception):
    """Our own stdout (or stderr) was closed or cannot be written (``conveyor … | head -1``): leave quietly."""


# Exit status when our output goes away: what a shell reports for a program killed by SIGPIPE
# (128 + 13), as 130 is 128 + SIGINT.
EXIT_OUTPUT_CLOSED = 141


class ServerBusy(CLIError):
    """A RETRYABLE status; ``retry_after`` is how long the server asked us to wait (0 when it did not)."""

    def __init__(self, message: str, *, retry_after: float) -> None:
        super().__init__(message, exit_code=SERVER_TROUBLE)
        self.retry_after = retry_after


def retry_after(headers: Mapping[str, str]) -> float:
    """``Retry-After`` in seconds (a number or an HTTP date), at most MAX_RETRY_AFTER; 0 when absent or odd."""
    value = (headers.get("Retry-After") or "").strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = (parsedate_to_datetime(value) - datetime.now(timezone.utc)).total_seconds()
        except (TypeError, ValueError):
            return 0.0
    return min(max(seconds, 0.0), MAX_RETRY_AFTER)


def error_message(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return f"HTTP {response.status_code}: {' '.join(response.text[:200].split())}"
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        message = f"{error.get('message') or error.get('code')}"
        fields = error.get("fields") or {}
        lines = [f"{field}: {'; '.join(map(str, problems))}" for field, problems in fields.items()]
        # A 400's message is its first field's problem ("algorithm: unknown algorithm …", config/errors.py):
        # that field's line would say it twice, the other fields' lines add to it.
        return "\n  ".join([message, *(line for line in lines if line != message)])
    return f"HTTP {response.status_code}: {body}"


def _is_json(response: httpx.Response) -> bool:
    try:
        response.json()
    except ValueError:
        return False
    return True


def json_body(response: httpx.Response) -> Any:
    """A 2xx body that is not JSON comes from something else (a proxy's login page, a wrong URL)."""
    try:
        return response.json()
    except ValueError:
        raise CLIError(f"unexpected non-JSON reply from {response.url}", exit_code=SERVER_TROUBLE) from None


def tokens_of(response: httpx.Response) -> dict[str, str]:
    tokens = json_body(response)
    if not isinstance(tokens, dict) or not isinstance(tokens.get("access"), str):
        raise CLIError(f"unexpected reply from {response.url}: no access token", exit_code=SERVER_TROUBLE)
    return {k: v for k, v in tokens.items() if k in ("access", "refresh")}


# The prefix of every API path. A URL given with it (``http://host:8000/api/v1/``, as the API's own links
# show it) names the server it is on, which is what --url and CONVEYOR_URL mean.
API_PREFIX = "/api/v1"


def base_url(url: str) -> str:
    """``url`` without a trailing "/" or API_PREFIX: the paths the client sends carry the prefix themselves."""
    url = url.rstrip("/")
    return url[:-len(API_PREFIX)] if url.endswith(API_PREFIX) else url


class Client:
    def __init__(self, url: str | None = None, *, timeout: float = 30.0) -> None:
        self.settings = config.load()
        self.url = base_url(url or self.settings.get("url") or config.DEFAULT_URL)
        try:
            self.http = httpx.Client(base_url=self.url, timeout=timeout)
        except httpx.InvalidURL as exc:  # a bad --url is server trouble, like one nobody answers
            raise CLIError(f"cannot reach {self.url}: {exc}", exit_code=SERVER_TROUBLE) from None

    # --- tokens ----------------------------------------------------------------------------------

    @property
    def access(self) -> str | None:
        if self.settings.get("url", self.url).rstrip("/") != self.url:
            return None  # tokens of another server
        return self.settings.get("access")

    def login(self, username: str, password: str) -> None:
        response = self._send("POST", "/api/v1/auth/token/", json={"username": username, "password": password},
                              auth=False, stream=False)
        if response.status_code != 200:
            busy = response.status_code in RETRYABLE or response.status_code >= 500 or not _is_json(response)
            code = SERVER_TROUBLE if busy else 5
            raise CLIError(f"login failed: {error_message(response)}", exit_code=code)
        self.settings = {"url": self.url, "username": username, **tokens_of(response)}
        config.save(self.settings)

    def refresh(self) -> bool:
        """False when the refresh token is refused (400/401: log in again); a busy or broken server
        raises like any other call (ServerBusy for RETRYABLE, SERVER_TROUBLE for a 5xx or an odd reply)."""
        refresh = self.settings.get("refresh") if self.access else None
        if not refresh:
            return False
        path = "/api/v1/auth/token/refresh/"
        response = self._send("POST", path, json={"refresh": refresh}, auth=False, stream=False)
        if response.status_code in (400, 401):
            return False
        self._check(response, path, (200,))
        self.settings.update(tokens_of(response))
        config.save(self.settings)
        return True

    def fresh_access(self) -> str:
        """A token that works right now (the WebSocket cannot answer 401 and retry)."""
        self.request("GET", "/api/v1/tasks/", params={"page_size": 1})
        if not self.access:
            raise CLIError("not logged in: run `conveyor login`", exit_code=5)
        return self.access

    # --- requests --------------------------------------------------------------------------------

    def request(self, method: str, path: str, *, ok: tuple[int, ...] = (200, 201), **kwargs: Any) -> httpx.Response:
        with self.stream(method, path, ok=ok, **kwargs) as response:
            response.read()
        return response

    @contextmanager
    def stream(self, method: str, path: str, *, ok: tuple[int, ...] = (200, 201), **kwargs: Any) -> Iterator[httpx.Response]:
        """The response with its body still unread (read it piece by piece: ``iter_bytes``); closed on leaving."""
        response = self._send(method, path, **kwargs)
        try:
            if response.status_code == 401 and self.refresh():
                response.close()
                response = self._send(method, path, **kwargs)
            self._check(response, path, ok)
            yield response
        except httpx.HTTPError as exc:
            raise CLIError(f"lost the connection to {self.url}: {exc}", exit_code=SERVER_TROUBLE) from None
        finally:
            response.close()

    def _check(self, response: httpx.Response, path: str, ok: tuple[int, ...]) -> None:
        """A refusal in the API's JSON error shape (a 4xx) exits 1; a RETRYABLE status, any other 5xx,
        or an error that is not JSON (a proxy's page, a wrong URL) is server trouble (6)."""
        status = response.status_code
        if status == 401:
            raise CLIError("not logged in (or the session expired): run `conveyor login`", exit_code=5)
        if status == 404 and "/tasks/" not in path:
            raise NotAvailable(f"{self.url} has no {path} endpoint (404)")
        if status not in ok:
            response.read()
            if status in RETRYABLE:
                raise ServerBusy(error_message(response), retry_after=retry_after(response.headers))
            if not _is_json(response):
                raise CLIError(f"unexpected non-JSON reply from {response.url}: {error_message(response)}",
                               exit_code=SERVER_TROUBLE)
            if status >= 500:
                raise CLIError(f"server error: {error_message(response)}", exit_code=SERVER_TROUBLE)
            raise CLIError(error_message(response))

    def _send(self, method: str, path: str, *, auth: bool = True, stream: bool = True, **kwargs: Any) -> httpx.Response:
        """Network trouble and a bad URL are a CLIError, never a traceback. ``auth=False``: no token
        (logging in and refreshing need none); ``stream=False``: the body is read here."""
        headers = dict(kwargs.pop("headers", None) or {})
        if auth and self.access:
            headers["Authorization"] = f"Bearer {self.access}"
        try:
            return self.http.send(self.http.build_request(method, path, headers=headers, **kwargs), stream=stream)
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            raise CLIError(f"cannot reach {self.url}: {exc}", exit_code=SERVER_TROUBLE) from None

    def get(self, path: str, **kwargs: Any) -> Any:
        return json_body(self.request("GET", path, **kwargs))

    def post(self, path: str, body: Any = None, **kwargs: Any) -> Any:
        return json_body(self.request("POST", path, json=body, **kwargs))

    def ws_url(self, path: str) -> str:
        parts = urlsplit(self.url)
        scheme = "wss" if parts.scheme == "https" else "ws"
        return urlunsplit((scheme, parts.netloc, parts.path.rstrip("/") + path, "", ""))
