from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.utils import timezone

from accounts import services
from accounts.models import ApiKey, Scope
from config.admin_input import CheckedSelection


class ApiKeyAddForm(forms.ModelForm):
    scopes = forms.MultipleChoiceField(choices=Scope.choices, widget=forms.CheckboxSelectMultiple,
                                       initial=[Scope.READ, Scope.SUBMIT])

    class Meta:
        model = ApiKey
        fields = ["user", "name", "scopes", "expires_at"]


@admin.register(ApiKey)
class ApiKeyAdmin(CheckedSelection, admin.ModelAdmin):
    list_display = ["name", "prefix", "user", "scopes", "created_at", "last_used_at", "expires_at", "revoked_at"]
    list_filter = ["revoked_at"]
    search_fields = ["name", "prefix", "user__username"]
    readonly_fields = ["prefix", "created_at", "last_used_at"]
    actions = ["revoke"]

    def get_readonly_fields(self, request: Any, obj: Any = None) -> list[str]:
        # A key's owner never changes: handing one's own key to another account made it act as that one.
        return [*self.readonly_fields, "user"] if obj is not None else list(self.readonly_fields)

    def get_form(self, request: Any, obj: Any = None, **kwargs: Any) -> Any:
        if obj is None:
            kwargs["form"] = ApiKeyAddForm
        return super().get_form(request, obj, **kwargs)

    def get_fields(self, request: Any, obj: Any = None) -> list[str]:
        if obj is None:  # a superuser makes keys for anyone; other staff only for themselves (below)
            return ["user", "name", "scopes", "expires_at"] if request.user.is_superuser else ["name", "scopes",
                                                                                              "expires_at"]
        return ["user", "name", "prefix", "scopes", "created_at", "last_used_at", "expires_at", "revoked_at"]

    def save_model(self, request: Any, obj: ApiKey, form: Any, change: bool) -> None:
        if change:
            return super().save_model(request, obj, form, change)
        # A staff user with the add permission minted a key for any account, a superuser's too, and acted as it.
        owner = obj.user if request.user.is_superuser else request.user
        key, raw = services.create_key(user=owner, name=obj.name, scopes=list(form.cleaned_data["scopes"]),
                                       expires_at=obj.expires_at)
        obj.pk = key.pk
        obj.refresh_from_db()
        messages.warning(request, f"API key {key.name}: {raw} — copy it now, it is not shown again.")

    @admin.action(description="Revoke selected keys", permissions=["change"])
    def revoke(self, request: Any, queryset: Any) -> None:
        count = queryset.filter(revoked_at__isnull=True).update(revoked_at=timezone.now())
        self.message_user(request, f"revoked {count} key(s)")
