from django.urls import path
from rest_framework.routers import SimpleRouter

from accounts.api.views import ApiKeyViewSet, TokenObtainView, TokenRefreshView

router = SimpleRouter()
router.register("auth/keys", ApiKeyViewSet, basename="apikey")
urlpatterns = [
    path("auth/token/", TokenObtainView.as_view(), name="token_obtain_pair"),
    path("auth/token/refresh/", TokenRefreshView.as_view(), name="token_refresh"),
    *router.urls,
]
