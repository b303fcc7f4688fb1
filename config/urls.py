from typing import Any

from django.contrib import admin
from django.http import HttpRequest, JsonResponse
from django.urls import include, path
from django.views.decorators.csrf import csrf_exempt
from drf_spectacular.views import SpectacularAPIView, SpectacularRedocView, SpectacularSwaggerView

from config.ratelimit import limit_anonymous_logins
from jobs.dashboard import dashboard
from observability.views import SystemHealthView


def read_only(request: HttpRequest) -> JsonResponse | None:
    """A 405 in the API's error shape for anything but GET and HEAD on a page that is only read."""
    if request.method in ("GET", "HEAD"):
        return None
    return JsonResponse({"error": {"code": "method_not_allowed", "message": f'method "{request.method}" not allowed'}},
                        status=405, headers={"Allow": "GET, HEAD"})


@csrf_exempt
def health(request: HttpRequest) -> JsonResponse:
    """Liveness: the process answers. Readiness (dependencies) is /api/v1/system/health/."""
    return read_only(request) or JsonResponse({"status": "ok"})


class PublicDocs:
    """The schema and its viewers are public: an anonymous reader counts as a reader (``RATE_LIMIT_READ``
    per client IP), not as a password attempt (``RATE_LIMIT_ANON``; config/ratelimit.py). They are only
    read: another method is a JSON 405 (DRF would render its error, or an OPTIONS answer, through the
    viewer's own template or YAML renderer, and the Swagger page has no template for that: a 500)."""

    rate_limit_anonymous = "read"

    def dispatch(self, request: HttpRequest, *args: Any, **kwargs: Any) -> Any:
        return read_only(request) or super().dispatch(request, *args, **kwargs)  # type: ignore[misc]


class SchemaView(PublicDocs, SpectacularAPIView):
    def perform_content_negotiation(self, request: Any, force: bool = False) -> Any:
        """``?format=json|yaml`` picks the schema's encoding (``URL_FORMAT_OVERRIDE`` is off for the API)."""
        wanted = request.query_params.get("format")
        for renderer in self.get_renderers() if wanted else ():
            if renderer.format == wanted:
                return renderer, renderer.media_type
        return super().perform_content_negotiation(request, force)


class SwaggerView(PublicDocs, SpectacularSwaggerView):
    pass


class RedocView(PublicDocs, SpectacularRedocView):
    pass


api_v1 = [
    path("", include("accounts.api.urls")),
    path("", include("jobs.api.urls")),
    path("", include("algorithms.api.urls")),
    path("", include("webhooks.api.urls")),
    path("", include("queueing.api.urls")),
    path("system/health/", SystemHealthView.as_view(), name="system-health"),
]

# Password guesses through the admin's form count like those at the token endpoint (its session works on the API).
admin.site.login = limit_anonymous_logins(admin.site.login)  # type: ignore[method-assign]

urlpatterns = [
    path("health/", health, name="health"),
    path("", include("django_prometheus.urls")),  # /metrics
    path("dashboard/", dashboard, name="dashboard"),
    path("admin/", admin.site.urls),
    path("api/v1/", include(api_v1)),
    path("api/schema/", SchemaView.as_view(), name="schema"),
    path("api/docs/", SwaggerView.as_view(url_name="schema"), name="swagger-ui"),
    path("api/redoc/", RedocView.as_view(url_name="schema", template_name="conveyor/redoc.html"), name="redoc"),
]

handler400 = "config.errors.bad_request_view"
handler403 = "config.errors.permission_denied_view"
handler404 = "config.errors.not_found_view"
handler500 = "config.errors.server_error_view"
