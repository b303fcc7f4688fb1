"""``/dashboard/``: the built single page (dashboard/dist/index.html); its assets are static files."""
from __future__ import annotations

from django.conf import settings
from django.http import HttpRequest, HttpResponse

INDEX = settings.BASE_DIR / "dashboard" / "dist" / "index.html"


def dashboard(request: HttpRequest) -> HttpResponse:
    """The page logs in through the REST API itself (JWT), so this view needs no session."""
    try:
        html = INDEX.read_bytes()
    except FileNotFoundError:
        return HttpResponse("The dashboard is not built: run `make install` (npm ci && npm run build in dashboard/).\n",
                            status=503, content_type="text/plain")
    return HttpResponse(html, content_type="text/html; charset=utf-8")
