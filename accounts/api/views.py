from __future__ import annotations

from drf_spectacular.utils import OpenApiExample, extend_schema, extend_schema_serializer, extend_schema_view
from rest_framework import mixins, serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import AuthenticationFailed, PermissionDenied
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework_simplejwt import views as jwt_views
from rest_framework_simplejwt.serializers import TokenObtainPairSerializer, TokenRefreshSerializer
from rest_framework_simplejwt.settings import api_settings as jwt_settings
from rest_framework_simplejwt.utils import get_md5_hash_password

from accounts import services
from accounts.api.serializers import ApiKeyCreatedOut, ApiKeyIn, ApiKeyOut
from accounts.models import ApiKey
from config.bodies import NoUnknownKeys
from config.schema import errors


class ApiKeyViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    """The caller's own API keys. Managing keys needs a JWT (or admin) login: a leaked key cannot mint more."""

    serializer_class = ApiKeyOut
    pagination_class = None
    # Every API key is refused here (accounts.authentication), and the schema drops apiKeyAuth for it.
    api_key_refused = "API keys are managed with a JWT login, not with an API key"

    def get_queryset(self):  # type: ignore[no-untyped-def]
        if getattr(self, "swagger_fake_view", False):
            return ApiKey.objects.none()
        return ApiKey.objects.filter(user=self.request.user)

    def initial(self, request: Request, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().initial(request, *args, **kwargs)
        if isinstance(request.auth, ApiKey):
            raise PermissionDenied(self.api_key_refused)

    @extend_schema(request=ApiKeyIn, responses={201: ApiKeyCreatedOut})
    def create(self, request: Request) -> Response:
        data = ApiKeyIn(data=request.data)
        data.is_valid(raise_exception=True)
        key, raw = services.create_key(user=request.user, **data.validated_data)
        return Response({**ApiKeyOut(key).data, "key": raw}, status=status.HTTP_201_CREATED)

    @extend_schema(request=None, responses={200: ApiKeyOut})
    @action(detail=True, methods=["post"])
    def revoke(self, request: Request, pk: str | None = None) -> Response:
        key = services.revoke(key_id=self.get_object().pk, by=request.user)
        return Response(ApiKeyOut(key).data)


TOKEN_EXAMPLES = [
    OpenApiExample("login", request_only=True, value={"username": "alice", "password": "correct horse battery staple"}),
    OpenApiExample("tokens", response_only=True, value={"access": "eyJhbGciOiJIUzI1NiIs…", "refresh": "eyJhbGciOi…"}),
]


class TokenPairOut(serializers.Serializer):
    access = serializers.CharField(help_text="Access token (JWT): `Authorization: Bearer <access>`.")
    refresh = serializers.CharField(help_text="Refresh token, for `POST /auth/token/refresh/`.")


class AccessTokenOut(serializers.Serializer):
    access = serializers.CharField(help_text="A new access token (JWT).")


# simplejwt's serializers, taking their own keys and nothing else, as every other body here does (``otp``:
# a 400 naming it, not a login that silently skipped what the client meant to send); the schema keeps
# simplejwt's component names.
@extend_schema_serializer(component_name="TokenObtainPair")
class LoginSerializer(NoUnknownKeys, TokenObtainPairSerializer):
    """A username and its password, and no other key."""

    takes = "a login"


@extend_schema_view(post=extend_schema(tags=["auth"], examples=TOKEN_EXAMPLES, request=LoginSerializer,
                                       responses={200: TokenPairOut, **errors(401)}))
class TokenObtainView(jwt_views.TokenObtainPairView):
    """A JWT pair (access + refresh) from username and password. Limited per client IP."""

    serializer_class = LoginSerializer


@extend_schema_serializer(component_name="TokenRefresh")
class RefreshSerializer(NoUnknownKeys, TokenRefreshSerializer):
    """A refresh token, and no other key. One issued before the user's password changed, or for a user
    deleted since, is refused (401)."""

    # simplejwt checks the password only on the access token it would mint (CHECK_REVOKE_TOKEN), and
    # a deleted user was a 500 there.
    takes = "a refresh"

    def validate(self, attrs: dict) -> dict:
        from django.contrib.auth import get_user_model

        refresh = self.token_class(attrs["refresh"])  # a bad or expired token: TokenError, a 401
        user = get_user_model().objects.filter(**{jwt_settings.USER_ID_FIELD: refresh.payload.get(
            jwt_settings.USER_ID_CLAIM)}).first()
        if user is None:
            raise AuthenticationFailed("No active account found for the given token.", code="no_active_account")
        if refresh.payload.get(jwt_settings.REVOKE_TOKEN_CLAIM) != get_md5_hash_password(user.password):
            raise AuthenticationFailed("The user's password has been changed.", code="password_changed")
        return super().validate(attrs)


@extend_schema_view(post=extend_schema(tags=["auth"], request=RefreshSerializer, responses={
    200: AccessTokenOut, **errors(401)}, examples=[
    OpenApiExample("refresh", request_only=True, value={"refresh": "eyJhbGciOi…"}),
    OpenApiExample("new access token", response_only=True, value={"access": "eyJhbGciOiJIUzI1NiIs…"})]))
class TokenRefreshView(jwt_views.TokenRefreshView):
    """A new access token from a refresh token."""

    serializer_class = RefreshSerializer
