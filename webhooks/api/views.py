from __future__ import annotations

from django_filters.utils import translate_validation
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import status, viewsets
from rest_framework.decorators import action
from rest_framework.request import Request
from rest_framework.response import Response

from jobs.api.views import NewestFirst  # ?page_size= and ?cursor= checked, a 400 naming them
from webhooks import selectors, services
from webhooks.api.filters import DeliveryFilter
from webhooks.api.serializers import (
    DELIVERED_EVENTS, DeliveryDetailOut, DeliveryOut, WebhookIn, WebhookOut, WebhookPatchIn, WebhookWithSecretOut,
)
from config.schema import errors
from webhooks.models import DeliveryStatus, Subscription


# The delivery's id, or its webhook-id (msg_<32 hex>): what a receiver has from the request's headers.
DELIVERY_ID = r"deliveries/(?P<delivery_id>(?:msg_)?[0-9a-fA-F-]{32,36})"
DELIVERY_PARAM = OpenApiParameter("delivery_id", OpenApiTypes.STR, OpenApiParameter.PATH,
                                  description="the delivery's id, or its `webhook_id` (`msg_…`)")


class WebhookViewSet(viewsets.GenericViewSet):
    """``/api/v1/webhooks/``: the user's endpoints, their delivery log, redelivery. Others' are 404."""

    serializer_class = WebhookOut
    pagination_class = NewestFirst
    api_key_write_scope = "webhooks"  # an API key needs it for every change here (accounts.authentication)

    def get_queryset(self):  # type: ignore[no-untyped-def]
        if getattr(self, "swagger_fake_view", False):  # schema generation: no user
            return Subscription.objects.none()
        return selectors.subscriptions_for(self.request.user)

    def get_object(self):  # type: ignore[no-untyped-def]
        return selectors.subscription_for(self.request.user, self.kwargs["pk"])

    @extend_schema(responses=WebhookOut(many=True))
    def list(self, request: Request) -> Response:
        """The user's webhooks, newest first (secrets are never listed)."""
        page = self.paginate_queryset(self.get_queryset())
        return self.get_paginated_response(WebhookOut(page, many=True).data)

    @extend_schema(request=WebhookIn, responses={201: WebhookWithSecretOut, **errors(403)})
    def create(self, request: Request) -> Response:
        """Subscribe a URL to events; the response shows the signing secret, once."""
        data = WebhookIn(data=request.data)
        data.is_valid(raise_exception=True)
        sub = services.subscribe(owner=request.user, **data.validated_data)
        return Response(WebhookWithSecretOut(sub).data, status=status.HTTP_201_CREATED)

    @extend_schema(responses=WebhookOut)
    def retrieve(self, request: Request, pk: str | None = None) -> Response:
        """One webhook with its health (failure streak, disabled state)."""
        return Response(WebhookOut(self.get_object()).data)

    @extend_schema(request=WebhookPatchIn, responses={200: WebhookOut, **errors(403)})
    def partial_update(self, request: Request, pk: str | None = None) -> Response:
        """Change some fields; ``active: false`` fails what waits, ``active: true`` starts clean."""
        data = WebhookPatchIn(data=request.data)
        data.is_valid(raise_exception=True)
        sub = services.update(subscription=self.get_object(), by=request.user, **data.validated_data)
        return Response(WebhookOut(sub).data)

    @extend_schema(request=WebhookIn, responses={200: WebhookOut, **errors(403)})
    def update(self, request: Request, pk: str | None = None) -> Response:
        """Replace the webhook's url, events, description and active flag."""
        data = WebhookIn(data=request.data)
        data.is_valid(raise_exception=True)
        sub = services.update(subscription=self.get_object(), by=request.user, **data.validated_data)
        return Response(WebhookOut(sub).data)

    @extend_schema(responses={204: None})
    def destroy(self, request: Request, pk: str | None = None) -> Response:
        """Delete the webhook and its delivery log; nothing waiting is sent."""
        services.unsubscribe(subscription=self.get_object())
        return Response(status=status.HTTP_204_NO_CONTENT)

    @extend_schema(request=None, responses=WebhookWithSecretOut)
    @action(detail=True, methods=["post"], url_path="rotate-secret")
    def rotate_secret(self, request: Request, pk: str | None = None) -> Response:
        """A new secret; the old one keeps signing (a second signature) for WEBHOOK_SECRET_GRACE_HOURS."""
        sub = services.rotate_secret(subscription=self.get_object())
        return Response(WebhookWithSecretOut(sub).data)

    @extend_schema(responses=DeliveryOut(many=True), parameters=[
        OpenApiParameter("status", str, enum=DeliveryStatus.values),
        OpenApiParameter("event", str, enum=DELIVERED_EVENTS),
        OpenApiParameter("task_id", OpenApiTypes.UUID, description="one task's deliveries")])
    @action(detail=True, methods=["get"])
    def deliveries(self, request: Request, pk: str | None = None) -> Response:
        """The delivery log, newest first."""
        rows = DeliveryFilter(request.query_params, queryset=selectors.deliveries_of(self.get_object()))
        if not rows.is_valid():
            raise translate_validation(rows.errors)  # a 400 naming the parameter
        page = self.paginate_queryset(rows.qs)
        return self.get_paginated_response(DeliveryOut(page, many=True).data)

    @extend_schema(responses=DeliveryDetailOut, parameters=[DELIVERY_PARAM])
    @action(detail=True, methods=["get"], url_path=DELIVERY_ID)
    def delivery(self, request: Request, pk: str | None = None, delivery_id: str | None = None) -> Response:
        """One delivery: its payload and every attempt (time, status code, duration, response, error)."""
        return Response(DeliveryDetailOut(selectors.delivery_of(self.get_object(), delivery_id)).data)

    @extend_schema(request=None, responses={202: DeliveryOut, **errors(409)}, parameters=[DELIVERY_PARAM])
    @action(detail=True, methods=["post"], url_path=DELIVERY_ID + "/redeliver")
    def redeliver(self, request: Request, pk: str | None = None, delivery_id: str | None = None) -> Response:
        """Send the delivery again now, with the same ``webhook-id``; 409 if the webhook is disabled."""
        row = services.redeliver(delivery_row=selectors.delivery_of(self.get_object(), delivery_id))
        return Response(DeliveryOut(row).data, status=status.HTTP_202_ACCEPTED)
