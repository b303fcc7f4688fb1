"""The REST side of the CLI: JWT login, refresh on 401, and the API's error shape as exceptions."""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
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


def error_message(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return f"HTTP {response.status_code}: {response.text[:200]}"
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        message = f"{error.get('message') or error.get('code')}"
        for field, problems in (error.get("fields") or {}).items():
            message += f"\n  {field}: {'; '.join(map(str, problems))}"
        return message
    return f"HTTP {response.status_code}: {body}"


class Client:
    def __init__(self, url: str | None = None, *, timeout: float = 30.0) -> None:
        self.settings = config.load()
        self.url = (url or self.settings.get("url") or config.DEFAULT_URL).rstrip("/")
        self.http = httpx.Client(base_url=self.url, timeout=timeout)

    # --- tokens ----------------------------------------------------------------------------------

    @property
    def access(self) -> str | None:
        if self.settings.get("url", self.url).rstrip("/") != self.url:
            return None  # tokens of another server
        return self.settings.get("access")

    def login(self, username: str, password: str) -> None:
        response = self.http.post("/api/v1/auth/token/", json={"username": username, "password": password})
        if response.status_code != 200:
            raise CLIError(f"login failed: {error_message(response)}", exit_code=5)
        tokens = response.json()
        self.settings = {"url": self.url, "username": username, "access": tokens["access"],
                         "refresh": tokens["refresh"]}
        config.save(self.settings)

    def refresh(self) -> bool:
        refresh = self.settings.get("refresh") if self.access else None
        if not refresh:
            return False
        response = self.http.post("/api/v1/auth/token/refresh/", json={"refresh": refresh})
        if response.status_code != 200:
            return False
        self.settings.update({k: v for k, v in response.json().items() if k in ("access", "refresh")})
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
            raise CLIError(f"lost the connection to {self.url}: {exc}", exit_code=6) from None
        finally:
            response.close()

    def _check(self, response: httpx.Response, path: str, ok: tuple[int, ...]) -> None:
        if response.status_code == 401:
            raise CLIError("not logged in (or the session expired): run `conveyor login`", exit_code=5)
        if response.status_code == 404 and "/tasks/" not in path:
            raise NotAvailable(f"{self.url} has no {path} endpoint (404)")
        if response.status_code not in ok:
            response.read()
            raise CLIError(error_message(response))

    def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        headers = dict(kwargs.pop("headers", None) or {})
        if self.access:
            headers["Authorization"] = f"Bearer {self.access}"
        try:
            return self.http.send(self.http.build_request(method, path, headers=headers, **kwargs), stream=True)
        except httpx.HTTPError as exc:
            raise CLIError(f"cannot reach {self.url}: {exc}", exit_code=6) from None

    def get(self, path: str, **kwargs: Any) -> Any:
        return self.request("GET", path, **kwargs).json()

    def post(self, path: str, body: Any = None, **kwargs: Any) -> Any:
        return self.request("POST", path, json=body, **kwargs).json()

    def ws_url(self, path: str) -> str:
        parts = urlsplit(self.url)
        scheme = "wss" if parts.scheme == "https" else "ws"
        return urlunsplit((scheme, parts.netloc, parts.path.rstrip("/") + path, "", ""))
