"""Benchmark settings: the production settings module, plus a URLconf with a bare one-INSERT endpoint.

Every value is only a default; ``bench/harness.py`` points DATABASE_URL, REDIS_URL and
CELERY_BROKER_URL at the benchmark's own database, Redis DB and broker.
"""
import os

_DEFAULTS = {
    "SECRET_KEY": "bench-only-secret-key-not-for-production-use-0123456789",
    "DATABASE_URL": "postgres://postgres@127.0.0.1:5432/conveyor_bench",
    "REDIS_URL": "redis://127.0.0.1:6379/8",
    "CHANNEL_PREFIX": "conveyor-bench",
    "CELERY_BEAT_SCHEDULER": "config.beat:PersistentScheduler",
    "LOG_LEVEL": "WARNING",
    # The benchmark measures the pipeline, not the per-user rate limits (tests/edge covers those).
    "RATE_LIMIT_ENABLED": "false",
}
for _name, _value in _DEFAULTS.items():
    os.environ.setdefault(_name, _value)

from config.settings import *  # noqa: E402,F401,F403

ROOT_URLCONF = "bench.urls"
