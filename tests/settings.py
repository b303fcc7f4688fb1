"""Test settings: production settings with short timings, so recovery paths run in seconds.

Every value is only a default: ``DATABASE_URL``, ``REDIS_URL`` and friends from the environment win
(``make test`` uses the machine's PostgreSQL and Redis on 127.0.0.1). The live worker subprocess
imports this module too, so both sides agree.
"""
import os

_DEFAULTS = {
    "SECRET_KEY": "tests-only-secret-key-not-for-production-use-0123456789",
    "DATABASE_URL": "postgres://postgres@127.0.0.1:5432/conveyor",
    # DB 15 keeps test messages away from a `make run` on DB 0; the channel prefix does the same for
    # pub/sub, which Redis does not separate by DB number.
    "REDIS_URL": "redis://127.0.0.1:6379/15",
    "CHANNEL_PREFIX": "conveyor-test",
    "CELERY_BEAT_SCHEDULER": "config.beat:PersistentScheduler",
    # Limits far above what a test makes; tests/edge/test_rate_limits.py sets low ones where it needs them.
    "RATE_LIMIT_STANDARD": "100000",
    "RATE_LIMIT_PREMIUM": "100000",
    "RATE_LIMIT_BATCH": "100000",
    "RATE_LIMIT_READ": "100000",
    "RATE_LIMIT_ANON": "100000",
    "TASK_HEARTBEAT_SECONDS": "0.3",
    "TASK_HEARTBEAT_STALE_SECONDS": "3",
    "TASK_QUEUED_RESEND_SECONDS": "3",
    "TASK_CANCEL_GRACE_SECONDS": "2",
    "TASK_BACKOFF_BASE_SECONDS": "0.2",
    "TASK_PROGRESS_MIN_INTERVAL": "0.05",
    "RECONCILE_EVERY_SECONDS": "1",
    "DISPATCH_TICK_SECONDS": "1",
    # The session's worker also consumes ``batched``, several task ids per message (tests/e2e/test_batched.py);
    # ``stopbatch`` is consumed by a worker of its own (tests/queueing/test_e2e_shutdown_fairness.py).
    "DISPATCH_BATCH": "batched:4,stopbatch:4",
    # Test-only external programs (tests/algorithms/test_process_adapter.py).
    "EXTERNAL_ALGORITHMS": "tests/algorithms/external_test.toml",
    # Results and artifacts of test tasks land here, not in the repository's media/.
    "MEDIA_ROOT": os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "test-artifacts", "media"),
    "WORKER_HEARTBEAT_SECONDS": "0.5",
    # Readiness answers what is true now (tests stop dependencies and look at once); test_health pins the cache.
    "HEALTH_CACHE_SECONDS": "0",
    "WORKER_STALE_SECONDS": "3",
    "WORKER_SHUTDOWN_GRACE_SECONDS": "2",
    # Webhooks: receivers on 127.0.0.1 are allowed in tests only; retries and re-sends in well under a second.
    "WEBHOOK_ALLOWED_NETWORKS": "127.0.0.0/8",
    "WEBHOOK_RETRY_SCHEDULE": "0.3,0.6,1",
    "WEBHOOK_RESEND_SECONDS": "3",
    "WEBHOOK_SEND_DUE_SECONDS": "0.5",
    "WEBHOOK_CONNECT_TIMEOUT": "2",
    "WEBHOOK_READ_TIMEOUT": "2",
}
for _name, _value in _DEFAULTS.items():
    os.environ.setdefault(_name, _value)

from config.settings import *  # noqa: E402,F401,F403

# Hashing a password on purpose takes ~0.5 s; the cast logs in hundreds of times per session.
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
