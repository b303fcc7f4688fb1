"""Conveyor settings: one module, every knob an environment variable (see README, "Configuration").

Defaults run on one machine: PostgreSQL and Redis on 127.0.0.1 (``make run`` starts embedded ones
and points these variables at them when none are configured).
"""
from __future__ import annotations

import re
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

from config.devkey import dev_data_dir, dev_secret_key
from config.env import (env_bool, env_choice, env_float, env_floats, env_int, env_json_object, env_list,
                        env_networks, env_sizes, env_str)

BASE_DIR = Path(__file__).resolve().parent.parent


DEBUG = env_bool("DEBUG", False)
# Never a constant (it signs JWTs: whoever knows it can sign an admin's token). Without SECRET_KEY, a local
# stack (CONVEYOR_DEV, which make run sets, or DEBUG) gets a random key made once per data folder and kept
# there (.conveyor/secret_key, config/devkey.py); anywhere else SECRET_KEY must be given.
_local_stack = env_bool("CONVEYOR_DEV", False) or DEBUG
SECRET_KEY = env_str("SECRET_KEY", "") or (dev_secret_key(dev_data_dir()) if _local_stack else env_str("SECRET_KEY"))
ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", "localhost,127.0.0.1,[::1],testserver")
# What kubelet probes, the image's and compose's health checks and Prometheus ask for: they name the pod or
# container (Host: 10.1.2.3:8000, 127.0.0.1:8000), not the site. A GET or HEAD of exactly one of these
# paths is answered whatever its Host (observability.probes, first in MIDDLEWARE); every other path
# keeps the ALLOWED_HOSTS check. They are never redirected to HTTPS either (SECURE_REDIRECT_EXEMPT).
PROBE_PATHS = ("/health/", "/api/v1/system/health/", "/metrics")
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", "")
CSRF_FAILURE_VIEW = "config.errors.csrf_failure_view"  # JSON outside the admin

# --- Security behind TLS (README "Production") ---------------------------------------------------
# SECURE_SSL=true when clients reach Conveyor over HTTPS (usually a TLS-terminating proxy or ingress).
SECURE_SSL = env_bool("SECURE_SSL", False)
SESSION_COOKIE_SECURE = CSRF_COOKIE_SECURE = SECURE_SSL
# Each is read (and a malformed value refused) whether or not SECURE_SSL is on, so that turning it on later
# cannot bring a bad value to light in production.
SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 31536000) * SECURE_SSL
SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", False) and SECURE_SSL
SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", True) and SECURE_SSL
# Probes and Prometheus scrape over plain HTTP inside the cluster: never redirect them.
SECURE_REDIRECT_EXEMPT = [f"^{re.escape(path.lstrip('/'))}$" for path in PROBE_PATHS]
if env_bool("SECURE_PROXY_SSL_HEADER", SECURE_SSL):
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SESSION_COOKIE_HTTPONLY = True
SECURE_CONTENT_TYPE_NOSNIFF = True
X_FRAME_OPTIONS = "DENY"
# Browser clients on other origins (a separate dashboard, notebooks): an explicit allow-list, never "*".
CORS_ALLOWED_ORIGINS = env_list("CORS_ALLOWED_ORIGINS", "")
CORS_ALLOW_HEADERS = (
    "accept", "authorization", "content-type", "idempotency-key", "x-request-id", "x-api-key", "x-csrftoken",
)
CORS_EXPOSE_HEADERS = ("retry-after", "x-request-id")

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "rest_framework_simplejwt",
    "django_filters",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "channels",
    "django_celery_beat",
    "queueing",
    "jobs",
    "algorithms",
    "webhooks",
    "corsheaders",
    "observability",
    "accounts",
    "django_prometheus",
]

MIDDLEWARE = [
    "observability.probes.ProbeHostMiddleware",  # first: before anything calls request.get_host()
    "django_prometheus.middleware.PrometheusBeforeMiddleware",
    "observability.middleware.RequestContextMiddleware",
    "config.errors.RefuseNulInQueryMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "corsheaders.middleware.CorsMiddleware",
    "config.slashes.ApiTrailingSlashMiddleware",  # before CommonMiddleware's APPEND_SLASH redirect
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "observability.middleware.PrometheusAfterMiddleware",  # django-prometheus, 400 on a bad Content-Length
]

ROOT_URLCONF = "config.urls"
ASGI_APPLICATION = "config.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

DATABASE_URL = env_str("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/conveyor")
try:
    DATABASES = {
        "default": dj_database_url.parse(
            DATABASE_URL, conn_max_age=env_int("DB_CONN_MAX_AGE", 60), conn_health_checks=True
        )
    }
except ValueError as exc:  # not repeated: the URL may hold a password
    raise ImproperlyConfigured(f"DATABASE_URL is not a database URL ({exc}); "
                               "expected postgres://user:password@host:5432/name") from None
# A database that does not answer fails a request (and the readiness probe) quickly instead of hanging.
DATABASES["default"].setdefault("OPTIONS", {}).setdefault(
    "connect_timeout", env_int("DB_CONNECT_TIMEOUT", 5, minimum=1))  # libpq would wait for ever on 0
# Server-prepared statements for the statements on every task's path (jobs/prepared.py asks for them
# by name; every other query stays client-bound and unprepared): PostgreSQL parses and
# plans each of those long statements once per connection instead of on every call, with a generic plan
# (their plans do not depend on the values: ids, results, a queue's name; a custom plan per call cost as
# much as the parse it saves). Only prepared statements — those, and PL/pgSQL's, which the statistics
# triggers' parameterless statements do not change — use the plan cache. DB_PREPARED_STATEMENTS=false
# behind a pooler that cannot keep prepared statements (PgBouncer before 1.21 in transaction mode).
DB_PREPARED_STATEMENTS = env_bool("DB_PREPARED_STATEMENTS", True)
if DB_PREPARED_STATEMENTS:
    DATABASES["default"]["OPTIONS"]["options"] = " ".join(
        filter(None, [DATABASES["default"]["OPTIONS"].get("options"), "-c plan_cache_mode=force_generic_plan"]))
# A connection pool per process (psycopg_pool). Use it for the ASGI web server: there each request runs
# in a thread of its own (config/handlers.py; idle ones are used again), so persistent connections
# (DB_CONN_MAX_AGE) number as many as the most requests ever at once, each thread keeping its own
# ("too many clients" at 16 concurrent submits in bench/ when every request had a new thread). The
# pool bounds them and shares them between threads. Pooling replaces DB_CONN_MAX_AGE.
_DB_POOL_TIMEOUT = env_float("DB_POOL_TIMEOUT", 10.0, positive=True)  # read (and checked) with no pool too
if env_int("DB_POOL_MAX_SIZE", 0) > 0:
    DATABASES["default"]["CONN_MAX_AGE"] = 0
    DATABASES["default"]["OPTIONS"]["pool"] = {"min_size": 1, "max_size": env_int("DB_POOL_MAX_SIZE", 0),
                                               "timeout": _DB_POOL_TIMEOUT}

if not DATABASES["default"]["ENGINE"].endswith("postgresql"):
    raise ImproperlyConfigured("Conveyor needs PostgreSQL (SKIP LOCKED, partial indexes): set DATABASE_URL=postgres://…")

REDIS_URL = env_str("REDIS_URL", "redis://127.0.0.1:6379/0")
# Readiness (/api/v1/system/health/): per-dependency timeout, and how long to wait for worker pings.
HEALTH_CHECK_TIMEOUT = env_float("HEALTH_CHECK_TIMEOUT", 2.0, positive=True)
HEALTH_WORKER_PING_TIMEOUT = env_float("HEALTH_WORKER_PING_TIMEOUT", 0.5, positive=True)
# /api/v1/system/health/ runs its checks at most once per this many seconds per process (0: every call).
HEALTH_CACHE_SECONDS = env_float("HEALTH_CACHE_SECONDS", 1.0)
# Web (daphne): on SIGTERM, serve the requests in flight for at most this many seconds before stopping,
# readiness answering 503 meanwhile (config/handlers.py drain_on_sigterm). Keep it under the platform's
# grace (Kubernetes terminationGracePeriodSeconds less the preStop sleep; compose stop_grace_period).
WEB_SHUTDOWN_GRACE_SECONDS = env_float("WEB_SHUTDOWN_GRACE_SECONDS", 20.0)

CACHES = {
    "default": {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": REDIS_URL,
        "KEY_PREFIX": "conveyor",
        # one pool per process, not one per request's cache object under ASGI (config/redis_pool.py)
        "OPTIONS": {"pool_class": "config.redis_pool.SharedConnectionPool"},
    }
}

CHANNEL_LAYERS = {
    "default": {
        "BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer",
        "CONFIG": {"hosts": [env_str("CHANNEL_REDIS_URL", REDIS_URL)], "prefix": env_str("CHANNEL_PREFIX", "conveyor-ch")},
    }
}

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"
# The dashboard's Vite build (dashboard/dist, made by `make install`) under /static/dashboard/.
STATICFILES_DIRS = [("dashboard", BASE_DIR / "dashboard" / "dist")]
# Serve straight from the finders, so a fresh build needs no collectstatic step.
WHITENOISE_USE_FINDERS = True
MEDIA_ROOT = Path(env_str("MEDIA_ROOT", str(BASE_DIR / "media")))
MEDIA_URL = "media/"
# Results and artifacts go to the default storage: chunks in PostgreSQL, which web and workers on other
# hosts already share (algorithms/storage.py), unless STORAGE_BACKEND names another: files under
# MEDIA_ROOT (django.core.files.storage.FileSystemStorage, one host or a shared volume) or S3
# (storages.backends.s3.S3Storage with STORAGE_OPTIONS='{"bucket_name": "…"}'; README).
STORAGES = {
    "default": {
        "BACKEND": env_str("STORAGE_BACKEND", "algorithms.storage.DatabaseStorage"),
        "OPTIONS": env_json_object("STORAGE_OPTIONS"),
    },
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
}
# Connections per process that DatabaseStorage's chunk reads (downloads) borrow, one read at a time.
STORAGE_READ_CONNECTIONS = env_int("STORAGE_READ_CONNECTIONS", 8, minimum=1)
# A download whose client reads nothing for this long is cut off (algorithms/daphne_flow.py).
DOWNLOAD_STALL_SECONDS = env_float("DOWNLOAD_STALL_SECONDS", 300.0, positive=True)

# The largest request body (a batch of up to TASK_BATCH_MAX tasks with their params); over it: 413.
DATA_UPLOAD_MAX_MEMORY_SIZE = env_int("REQUEST_BODY_MAX_BYTES", 10 * 1024 * 1024, minimum=1)

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "rest_framework_simplejwt.authentication.JWTAuthentication",
        "accounts.authentication.ApiKeyAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_FILTER_BACKENDS": ["django_filters.rest_framework.DjangoFilterBackend"],
    "DEFAULT_SCHEMA_CLASS": "config.schema.AutoSchema",
    "EXCEPTION_HANDLER": "config.errors.exception_handler",
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    # JSON bodies only (a form or multipart body is a 415), so the schema offers clients one encoding;
    # a JSON body nested too deep is a 400 instead of a 500 (config/parsers.py).
    "DEFAULT_PARSER_CLASSES": ["config.parsers.JSONParser"],
    "TEST_REQUEST_DEFAULT_FORMAT": "json",
    # No ``?format=`` on the API: it chose no representation there, and an unknown one was a 404 (the
    # schema's ``?format=json|yaml`` is its view's own, config/urls.py).
    "URL_FORMAT_OVERRIDE": None,
    "UNAUTHENTICATED_USER": "django.contrib.auth.models.AnonymousUser",
    "DEFAULT_THROTTLE_CLASSES": ["config.ratelimit.TieredRateLimit"],
    # Proxies in front of Conveyor whose X-Forwarded-For is trusted for the client IP (0: use the peer).
    "NUM_PROXIES": env_int("TRUSTED_PROXIES", 0),
}
if DEBUG:
    REST_FRAMEWORK["DEFAULT_RENDERER_CLASSES"].append("rest_framework.renderers.BrowsableAPIRenderer")

# Requests per minute (config/ratelimit.py); counted in the shared Redis cache, so they hold across processes.
RATE_LIMITS = {
    "enabled": env_bool("RATE_LIMIT_ENABLED", True),
    "standard": env_int("RATE_LIMIT_STANDARD", 100),  # writes (submits, cancels, ...) per user
    "premium": env_int("RATE_LIMIT_PREMIUM", 1000),  # the same for RATE_LIMIT_PREMIUM_GROUP, staff, operators
    "batch": env_int("RATE_LIMIT_BATCH", 10),  # batch submits, bulk cancels and retries per user
    "read": env_int("RATE_LIMIT_READ", 1200),  # GETs per user
    "anon": env_int("RATE_LIMIT_ANON", 30),  # unauthenticated calls (token requests) per client IP
}
RATE_LIMIT_PREMIUM_GROUP = env_str("RATE_LIMIT_PREMIUM_GROUP", "premium")
RATELIMIT_USE_CACHE = "default"

SPECTACULAR_SETTINGS = {
    "TITLE": "Conveyor API",
    "DESCRIPTION": "Submit ML and algorithm jobs, watch them run, fetch their results.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "COMPONENT_SPLIT_REQUEST": True,
    "SCHEMA_PATH_PREFIX": r"/api/v1",
    # Swagger UI and Redoc from the drf-spectacular-sidecar package: the docs work without internet.
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "SWAGGER_UI_SETTINGS": {"persistAuthorization": True, "displayOperationId": True},
    "ENUM_NAME_OVERRIDES": {"TaskStatusEnum": "jobs.models.Status",
                            "WebhookDeliveryStatusEnum": "webhooks.models.DeliveryStatus"},
    "TAGS": [
        {"name": "auth", "description": "JWT tokens for people, API keys for services."},
        {"name": "tasks", "description": "Submit, watch, cancel, retry and re-prioritise tasks."},
        {"name": "algorithms", "description": "What can run, with each algorithm's parameter schema."},
        {"name": "system", "description": "Readiness of the dependencies."},
    ],
}

from datetime import timedelta  # noqa: E402

SIMPLE_JWT = {
    "ACCESS_TOKEN_LIFETIME": timedelta(minutes=env_int("JWT_ACCESS_MINUTES", 30, minimum=1)),
    "REFRESH_TOKEN_LIFETIME": timedelta(days=env_int("JWT_REFRESH_DAYS", 1, minimum=1)),
    # tokens carry a hash of the password they were issued under: a password change ends them all
    "CHECK_REVOKE_TOKEN": True,
    # web hosts' clocks differ by a little: a token issued on one a few seconds ahead ("iat" in the
    # future) or checked on one a few seconds behind is still good there (PyJWT checks with no leeway)
    "LEEWAY": timedelta(seconds=env_int("JWT_LEEWAY_SECONDS", 30, minimum=0)),
}


def _kombu_redis_url(url: str) -> str:
    """kombu spells a Redis unix socket ``redis+socket://path?virtual_host=N``; redis-py, Django's cache and
    channels-redis spell it ``unix://path?db=N`` (what ``make run``'s embedded Redis hands out)."""
    if not url.startswith("unix://"):
        return url
    path, _, query = url.removeprefix("unix://").partition("?")
    db = dict(part.partition("=")[::2] for part in query.split("&") if part).get("db", "0")
    return f"redis+socket://{path}?virtual_host={db}"


# --- Celery (read by config/celery.py with namespace="CELERY") -----------------------------------
CELERY_BROKER_URL = env_str("CELERY_BROKER_URL", _kombu_redis_url(REDIS_URL))
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TASK_IGNORE_RESULT = True
# One result-backend object per process, not per thread: every apply_async builds an AsyncResult, which
# asks for it, and daphne runs each request in a thread of its own.
CELERY_RESULT_BACKEND_THREAD_SAFE = True
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_DEFAULT_QUEUE = "default"
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
# A channel the broker closes (RabbitMQ's consumer_timeout past an unacknowledged message) is reconnected
# like a lost connection; without this the worker stopped consuming and exited once its tasks ended.
CELERY_BROKER_CHANNEL_ERROR_RETRY = True
# The database, not the broker, decides what runs: a redelivered message is dropped by the guarded
# claim, and a lost one is re-sent by the reconciler, so the visibility timeout only needs to be long.
CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": env_int("BROKER_VISIBILITY_TIMEOUT", 12 * 3600, minimum=1)}
CELERY_WORKER_SEND_TASK_EVENTS = False
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
# Celery's Django fixup closes the database connection around every task unless this is set (a new
# PostgreSQL connection per task cost ~17% of a short task); config/celery.py closes only broken or
# CONN_MAX_AGE-expired connections before each task instead.
CELERY_DB_REUSE_MAX = env_int("CELERY_DB_REUSE_MAX", 1_000_000)
# The database scheduler lets operators add schedules in the admin; tests use Celery's file scheduler.
# django-celery-beat's, sending an entry only while the one sent before has started (config/beat.py).
CELERY_BEAT_SCHEDULER = env_str("CELERY_BEAT_SCHEDULER", "config.beat:DatabaseScheduler")

# --- Conveyor ----------------------------------------------------------------------------------
CONVEYOR = {
    # retries: delay = min(BACKOFF_MAX, BACKOFF_BASE * 2**(attempt-1)) * jitter(0.5..1.5)
    "DEFAULT_MAX_RETRIES": env_int("TASK_DEFAULT_MAX_RETRIES", 3),
    "BACKOFF_BASE_SECONDS": env_float("TASK_BACKOFF_BASE_SECONDS", 2.0),
    "BACKOFF_MAX_SECONDS": env_float("TASK_BACKOFF_MAX_SECONDS", 600.0),
    "DEFAULT_TIMEOUT_SECONDS": env_int("TASK_DEFAULT_TIMEOUT_SECONDS", 3600, minimum=1),
    "CANCEL_GRACE_SECONDS": env_float("TASK_CANCEL_GRACE_SECONDS", 5.0),
    "HEARTBEAT_SECONDS": env_float("TASK_HEARTBEAT_SECONDS", 0.5, positive=True),
    # A batch (DISPATCH_BATCH) records its finished tasks at the end, or after this long (jobs/runner.py).
    "FINISH_FLUSH_SECONDS": env_float("FINISH_FLUSH_SECONDS", 0.25, positive=True),
    "HEARTBEAT_STALE_SECONDS": env_float("TASK_HEARTBEAT_STALE_SECONDS", 60.0, positive=True),
    "QUEUED_RESEND_SECONDS": env_float("TASK_QUEUED_RESEND_SECONDS", 30.0, positive=True),
    "PROGRESS_MIN_INTERVAL": env_float("TASK_PROGRESS_MIN_INTERVAL", 0.25),
    # ctx.log lines within this long of the last write wait for the next one (algorithms/context.py)
    "LOG_MIN_INTERVAL": env_float("TASK_LOG_MIN_INTERVAL", 0.25),
    # Live events leave a process this long after the first of them, together (jobs/events.py); 0: at once.
    "EVENT_COALESCE_MS": env_float("EVENT_COALESCE_MS", 1.0),
    "QUEUE_DEFAULT_CONCURRENCY": env_int("QUEUE_DEFAULT_CONCURRENCY", 8, minimum=1),
    # queueing: candidates read past the free slots when a per-owner cap may skip some
    "DISPATCH_SCAN_AHEAD": env_int("DISPATCH_SCAN_AHEAD", 200),
    # Queues of short tasks whose dispatcher may put several task ids in one message ("fast:8,bench:8"):
    # fewer messages and one dispatch per message instead of per task (docs/benchmarks.md). Each task is
    # still claimed and finished on its own; a long task in such a batch delays the ones behind it.
    "DISPATCH_BATCH": env_sizes("DISPATCH_BATCH"),
    # queueing: worker registry heartbeat, and when a silent worker counts as dead
    "WORKER_HEARTBEAT_SECONDS": env_float("WORKER_HEARTBEAT_SECONDS", 5.0, positive=True),
    "WORKER_STALE_SECONDS": env_float("WORKER_STALE_SECONDS", 30.0, positive=True),
    # queueing: on SIGTERM running tasks get this long; then the pool is killed and they are re-queued
    "WORKER_SHUTDOWN_GRACE_SECONDS": env_float("WORKER_SHUTDOWN_GRACE_SECONDS", 30.0),
    # queueing: throughput and estimated start times look at finishes in this window
    "QUEUE_THROUGHPUT_WINDOW_SECONDS": env_int("QUEUE_THROUGHPUT_WINDOW_SECONDS", 300, minimum=1),
    "BATCH_MAX": env_int("TASK_BATCH_MAX", 1000, minimum=1),
    # Results: JSON up to this many bytes stays in the database, larger goes to storage (docs/algorithms.md).
    "RESULT_INLINE_MAX": env_int("RESULT_INLINE_MAX", 256 * 1024),
    "RESULT_TTL_DAYS": env_float("RESULT_TTL_DAYS", 30.0),
    # Final tasks finished longer ago than this are deleted by beat with their events, results and
    # artifacts (jobs/retention.py); 0 keeps them for ever. At least the longest statistics window
    # (31 days) and RESULT_TTL_DAYS (jobs/checks.py); unset, 90 days or RESULT_TTL_DAYS if longer.
    "TASK_RETENTION_DAYS": env_float("TASK_RETENTION_DAYS", max(90.0, env_float("RESULT_TTL_DAYS", 30.0))),
    # External programs (algorithms/external.toml): extra declaration files, comma-separated.
    "EXTERNAL_ALGORITHMS": env_list("EXTERNAL_ALGORITHMS", ""),
    # WebSockets: application-level ping interval and how long a socket may wait for its auth message.
    "WS_PING_SECONDS": env_float("WS_PING_SECONDS", 20.0, positive=True),
    "WS_AUTH_TIMEOUT_SECONDS": env_float("WS_AUTH_TIMEOUT_SECONDS", 10.0, positive=True),
    # How often a WebSocket reads its user again: deactivated or demoted, the socket closes within this.
    "WS_RECHECK_SECONDS": env_float("WS_RECHECK_SECONDS", 30.0, positive=True),
}

# --- Remote algorithm services (docs/remote.md) ---------------------------------------------------
REMOTE = {
    # Operator-registered services (TOML); synced into the RemoteService table by discovery.
    "SERVICES_FILE": env_str("REMOTE_SERVICES_FILE", str(BASE_DIR / "algorithms" / "remote_services.toml")),
    "DISCOVERY_SECONDS": env_float("REMOTE_DISCOVERY_SECONDS", 60.0, positive=True),
    "HEALTH_SECONDS": env_float("REMOTE_HEALTH_SECONDS", 30.0, positive=True),
    # While a service is unreachable a bridged task waits (RUNNING, stage "waiting for service") and
    # polls at this interval, doubling up to the max, until it answers, the task is cancelled or times out.
    "RETRY_BASE_SECONDS": env_float("REMOTE_RETRY_BASE_SECONDS", 0.5, positive=True),
    "RETRY_MAX_SECONDS": env_float("REMOTE_RETRY_MAX_SECONDS", 15.0),
    # After waiting this long in the worker the task goes back to its queue (PENDING, attempt not
    # counted, not_before = backoff) so it holds no worker slot; it times out after timeout_seconds.
    "HOLD_AFTER_SECONDS": env_float("REMOTE_HOLD_AFTER_SECONDS", 5.0),
}

# --- Webhooks (README "Webhooks") ---------------------------------------------------------------
WEBHOOKS = {
    "CONNECT_TIMEOUT": env_float("WEBHOOK_CONNECT_TIMEOUT", 5.0, positive=True),
    "READ_TIMEOUT": env_float("WEBHOOK_READ_TIMEOUT", 10.0, positive=True),
    # The whole attempt (connect, wait for the answer, read its body) is cut off after this long, however
    # the receiver trickles. An attempt's lease (webhooks/delivery.py) is always at least this plus 10 s.
    "TOTAL_TIMEOUT": env_float("WEBHOOK_TOTAL_TIMEOUT", 30.0, positive=True),
    # Delay before attempt n+1 is RETRY_SCHEDULE[n-1] (the last entry repeats), times jitter 0.8..1.2.
    "RETRY_SCHEDULE": env_floats("WEBHOOK_RETRY_SCHEDULE", "5,30,120,600,3600,10800,21600,43200,86400"),
    "MAX_ATTEMPTS": env_int("WEBHOOK_MAX_ATTEMPTS", 13, minimum=1),
    # A sent message not picked up (lost by the broker) is sent again after this long.
    "RESEND_SECONDS": env_float("WEBHOOK_RESEND_SECONDS", 60.0, positive=True),
    "RESPONSE_MAX_BYTES": env_int("WEBHOOK_RESPONSE_MAX_BYTES", 4096),
    "DISABLE_AFTER_FAILURES": env_int("WEBHOOK_DISABLE_AFTER_FAILURES", 100),
    "DISABLE_AFTER_SECONDS": env_float("WEBHOOK_DISABLE_AFTER_DAYS", 5.0) * 86400,
    "SECRET_GRACE_SECONDS": env_float("WEBHOOK_SECRET_GRACE_HOURS", 24.0) * 3600,
    # CIDRs that deliveries may reach although private/loopback (tests: 127.0.0.0/8). Empty in production.
    "ALLOWED_NETWORKS": env_networks("WEBHOOK_ALLOWED_NETWORKS"),
    # Finished deliveries (and their attempts) older than this are deleted by beat; 0 keeps them for ever.
    "LOG_RETENTION_DAYS": env_float("WEBHOOK_LOG_RETENTION_DAYS", 30.0),
}

# structlog: JSON lines with request_id, task_id and user on each (observability/logs.py).
from observability.logs import logging_config  # noqa: E402

LOGGING = logging_config(level=env_choice("LOG_LEVEL", "INFO", ["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]),
                         fmt=env_choice("LOG_FORMAT", "json", ["json", "console"]))
