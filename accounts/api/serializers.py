from __future__ import annotations

from datetime import datetime

from drf_spectacular.utils import OpenApiExample, extend_schema_serializer
from django.utils import timezone
from rest_framework import serializers

from accounts.models import ApiKey, Scope
from config.bodies import NoUnknownKeys


@extend_schema_serializer(examples=[OpenApiExample(
    "a CI pipeline's key", request_only=True,
    value={"name": "nightly-training", "scopes": ["read", "submit"], "expires_at": "2027-01-01T00:00:00Z"})])
class ApiKeyIn(NoUnknownKeys):
    takes = "an API key"

    name = serializers.CharField(max_length=100)
    scopes = serializers.ListField(child=serializers.ChoiceField(choices=Scope.choices), allow_empty=False,
                                   max_length=len(Scope.choices), default=lambda: [Scope.READ, Scope.SUBMIT])
    expires_at = serializers.DateTimeField(required=False, allow_null=True)

    def validate_expires_at(self, value: datetime | None) -> datetime | None:
        if value is not None and value <= timezone.now():  # a key dead on arrival is a mistake, not a key
            raise serializers.ValidationError("must be in the future")
        return value


class ApiKeyOut(serializers.ModelSerializer):
    active = serializers.BooleanField(source="is_active", read_only=True)
    scopes = serializers.ListField(child=serializers.ChoiceField(choices=Scope.choices))

    class Meta:
        model = ApiKey
        fields = ["id", "name", "prefix", "scopes", "active", "created_at", "expires_at", "last_used_at",
                  "revoked_at"]
        read_only_fields = fields  # an answer: every field is always there (required in the schema)


@extend_schema_serializer(examples=[OpenApiExample(
    "created", response_only=True, status_codes=["201"],
    value={"id": 7, "name": "nightly-training", "prefix": "3fa85f64", "scopes": ["read", "submit"],
           "active": True, "created_at": "2026-11-23T18:00:00Z", "expires_at": None, "last_used_at": None,
           "revoked_at": None, "key": "cvk_3fa85f64_qW1x…"})])
class ApiKeyCreatedOut(ApiKeyOut):
    key = serializers.CharField(help_text="The key itself. Shown only in this response: store it now.")

    class Meta(ApiKeyOut.Meta):
        fields = [*ApiKeyOut.Meta.fields, "key"]
        read_only_fields = fields
