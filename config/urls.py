from django.contrib import admin
from django.http import HttpRequest, JsonResponse
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularRedocView, SpectacularSwaggerView

from config.ratelimit import limit_anonymous_logins
from jobs.dashboard import dashboard
from observability.views import SystemHealthView


def health(request: HttpRequest) -> JsonResponse:
    """Liveness: the process answers. Readiness (dependencies) is /api/v1/system/health/."""
    return JsonResponse({"status": "ok"})


class PublicDocs:
    """The schema and its viewers are public: an anonymous reader counts as a reader (``RATE_LIMIT_READ``
    per client IP), not as a password attempt (``RATE_LIMIT_ANON``; config/ratelimit.py)."""

    rate_limit_anonymous = "read"


class SchemaView(PublicDocs, SpectacularAPIView):
    pass


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
