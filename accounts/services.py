"""Create, verify and revoke API keys. Key format: ``cvk_<prefix>_<secret>``; ``prefix`` finds the row,
the SHA-256 of the whole key proves it."""
from __future__ import annotations

import hashlib
import hmac
import secrets
from datetime import datetime, timedelta
from typing import Any

from django.db import transaction
from django.utils import timezone

from accounts.models import ApiKey, Scope
from config.errors import InvalidInput, NotFound

KEY_PREFIX = "cvk_"
LAST_USED_RESOLUTION = timedelta(minutes=1)  # at most one UPDATE per key and minute


def _hash(raw: str) -> str:
    return hashlib.sha256(raw.encode()).hexdigest()


def create_key(*, user: Any, name: str, scopes: list[str], expires_at: datetime | None = None) -> tuple[ApiKey, str]:
    """Store a new key for ``user``; returns (row, raw key). The raw key is not kept anywhere."""
    unknown = sorted(set(scopes) - set(Scope.values))
    if unknown or not scopes:
        raise InvalidInput("scopes: choose from " + ", ".join(Scope.values), fields={"scopes": [
            f"unknown scope {unknown[0]!r}" if unknown else "at least one scope"]})
    prefix = secrets.token_hex(4)
    raw = f"{KEY_PREFIX}{prefix}_{secrets.token_urlsafe(24)}"
    key = ApiKey.objects.create(user=user, name=name, prefix=prefix, key_hash=_hash(raw),
                                scopes=sorted(set(scopes)), expires_at=expires_at)
    return key, raw


def verify(raw: str) -> ApiKey | None:
    """The active key ``raw`` names, or None. Compares hashes in constant time."""
    if not raw.startswith(KEY_PREFIX) or raw.count("_") < 2:
        return None
    prefix = raw[len(KEY_PREFIX):].split("_", 1)[0]
    key = ApiKey.objects.select_related("user").filter(prefix=prefix).first()
    if key is None or not hmac.compare_digest(key.key_hash, _hash(raw)):
        return None
    if not key.is_active or not key.user.is_active:
        return None
    now = timezone.now()
    if key.last_used_at is None or now - key.last_used_at > LAST_USED_RESOLUTION:
        ApiKey.objects.filter(pk=key.pk).update(last_used_at=now)
        key.last_used_at = now
    return key


@transaction.atomic
def revoke(*, key_id: int, by: Any) -> ApiKey:
    """Revoke one of ``by``'s keys (idempotent: a revoked key stays revoked at its first time)."""
    key = ApiKey.objects.select_for_update().filter(pk=key_id, user=by).first()
    if key is None:
        raise NotFound("API key not found")
    if key.revoked_at is None:
        key.revoked_at = timezone.now()
        key.save(update_fields=["revoked_at"])
    return key
