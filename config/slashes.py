"""An API path sent without its trailing slash (``POST /api/v1/tasks``) is served as the path with it.

Django's ``APPEND_SLASH`` answers such a request with a 301 to the slashed path, and clients follow a
301 with a GET: a submit became a task list, 200, and no task was made. Outside ``/api/`` (the admin,
the dashboard) the redirect stays."""
from __future__ import annotations

from typing import Any

from django.urls import is_valid_path


class ApiTrailingSlashMiddleware:
    def __init__(self, get_response: Any) -> None:
        self.get_response = get_response

    def __call__(self, request: Any) -> Any:
        path = request.path_info
        if path.startswith("/api/") and not path.endswith("/"):
            urlconf = getattr(request, "urlconf", None)
            if not is_valid_path(path, urlconf) and is_valid_path(f"{path}/", urlconf):
                request.path_info = f"{path}/"
                request.path = f"{request.path}/"
        return self.get_response(request)
