"""Settings, read from the environment in this one place (README lists every variable)."""

import ipaddress
import logging
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

from project.env import env_bool, env_float, env_int, env_str
from project.secret_key import debug_secret_key

BASE_DIR = Path(__file__).resolve().parent.parent
log = logging.getLogger("project.settings")


DEBUG = env_bool("DJANGO_DEBUG", False)

SECRET_KEY = env_str("DJANGO_SECRET_KEY")
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured(
            "DJANGO_SECRET_KEY is not set. Set it (or DJANGO_DEBUG=1 for a local dev server)."
        )
    # Debug only: one key per checkout, kept in a git-ignored file, so sign-ins survive
    # a restart and every process of the checkout accepts the others' sessions.
    SECRET_KEY = debug_secret_key(BASE_DIR / ".secret_key")

ALLOWED_HOSTS = [
    h.strip()
    for h in env_str("DJANGO_ALLOWED_HOSTS", "localhost,127.0.0.1,[::1]").split(",")
    if h.strip()
]
if "*" in ALLOWED_HOSTS:
    # A websocket's Host must be one of ALLOWED_HOSTS (chat/realtime/origin.py), and Django's
    # host check guards every HTTP request: "*" would turn both off.
    raise ImproperlyConfigured("DJANGO_ALLOWED_HOSTS must list hosts; '*' is refused.")
CSRF_TRUSTED_ORIGINS = [
    o.strip() for o in env_str("DJANGO_CSRF_TRUSTED_ORIGINS").split(",") if o.strip()
]
# Reverse proxies whose X-Forwarded-For names the client (addresses or CIDR networks):
# behind them the client's own address is REMOTE_ADDR, for the per-address sign-in and
# sign-up limits (chat/web/forwarded.py). Empty: no forwarded header is believed.
TRUSTED_PROXIES = [p.strip() for p in env_str("TRUSTED_PROXIES").split(",") if p.strip()]
for _proxy in TRUSTED_PROXIES:
    try:
        ipaddress.ip_network(_proxy, strict=False)
    except ValueError:
        raise ImproperlyConfigured(
            f"TRUSTED_PROXIES: {_proxy!r} is not an address or a CIDR network."
        ) from None

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "channels",
    "chat",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "chat.web.middleware.ContentSecurityPolicyMiddleware",
    "chat.web.middleware.RequestIdMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "project.urls"
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
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
WSGI_APPLICATION = None
ASGI_APPLICATION = "project.asgi.application"

DATABASES = {
    "default": dj_database_url.parse(
        env_str("DATABASE_URL") or f"sqlite:///{BASE_DIR / 'db.sqlite3'}",
        # Django docs: "When using ASGI, persistent connections should be disabled."
        conn_max_age=0,
    )
}
if DATABASES["default"]["ENGINE"].endswith("sqlite3"):
    # Many threads write through sync_to_async; wait for the lock instead of failing.
    # IMMEDIATE: a transaction takes the write lock when it begins, so one that reads
    # first (a prompt takes the user's quota lock with a SELECT) waits for a busy
    # database like any writer; a deferred one fails at once with "database is locked"
    # when it must upgrade a read snapshot another connection has written past.
    DATABASES["default"].setdefault("OPTIONS", {}).update(timeout=20, transaction_mode="IMMEDIATE")
DB_POOL_MAX = env_int("DB_POOL_MAX", 10)
if DATABASES["default"]["ENGINE"].endswith("postgresql") and DB_POOL_MAX > 0:
    # Without persistent connections every database_sync_to_async call would open and
    # close its own PostgreSQL connection (docs/decisions.md). Django's pool
    # (psycopg-pool) hands connections back on close instead; CONN_MAX_AGE stays 0.
    DATABASES["default"].setdefault("OPTIONS", {})["pool"] = {
        "min_size": 1,
        "max_size": DB_POOL_MAX,
        "timeout": 10,
    }
    # The pool checks a connection before handing it out (psycopg_pool's
    # `check_connection`, an empty query): one that the server ended (a restart, a
    # failover, an idle timeout) is replaced instead of failing the next request.
    DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# Channel layer: Redis when REDIS_URL is set (fan-out across processes), else in-memory.
REDIS_URL = env_str("REDIS_URL")
CHANNEL_PREFIX = env_str("CHANNEL_PREFIX", "chat")
# Connections of a process's redis-py client (presence, connection counts, replay reads);
# commands beyond them wait up to REDIS_POOL_WAIT_S for one to come free.
REDIS_MAX_CONNECTIONS = env_int("REDIS_MAX_CONNECTIONS", 50)
REDIS_POOL_WAIT_S = env_float("REDIS_POOL_WAIT_S", 10.0)
# Messages a channel of the layer queues before it drops (a plain consumer's channel;
# conversation events reach sockets through per-process listeners, not these channels).
CHANNEL_CAPACITY = env_int("CHANNEL_CAPACITY", 1000)
# The project's own channel layer (chat/fanout/layer.py) carries every conversation
# event, on one of its two backends: Redis (every process) or in-process.
if REDIS_URL:
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "chat.fanout.redis.layer.RedisLayer",
            "CONFIG": {
                "url": REDIS_URL,
                "prefix": CHANNEL_PREFIX,
                "capacity": CHANNEL_CAPACITY,
                "max_connections": REDIS_MAX_CONNECTIONS,
                "pool_wait_s": REDIS_POOL_WAIT_S,
            },
        }
    }
else:
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "chat.fanout.memory.InProcessLayer",
            "CONFIG": {"prefix": CHANNEL_PREFIX, "capacity": CHANNEL_CAPACITY},
        }
    }
# Settings of earlier layers, read no more: the startup log says so if they are set.
RETIRED_SETTINGS = [
    name for name in ("REDIS_CHANNEL_LAYER", "CHANNEL_GROUP_EXPIRY_S") if env_str(name)
]

# Upstream model (any OpenAI-compatible endpoint); the built-in simulator when unset.
OPENAI_API_KEY = env_str("OPENAI_API_KEY")
OPENAI_BASE_URL = env_str("OPENAI_BASE_URL")
OPENAI_MODEL = env_str("OPENAI_MODEL", "gpt-4o-mini")
OPENAI_TIMEOUT_S = env_float("OPENAI_TIMEOUT_S", 60.0)
OPENAI_MAX_RETRIES = env_int("OPENAI_MAX_RETRIES", 2)
# The HTTP stack under the SDK for a real upstream: "aiohttp" (the SDK's aiohttp extra,
# cheaper per streamed chunk) or "httpx" (the SDK's default). The simulator is in-process.
OPENAI_HTTP_TRANSPORT = env_str("OPENAI_HTTP_TRANSPORT", "aiohttp")
if OPENAI_HTTP_TRANSPORT not in ("aiohttp", "httpx"):
    raise ImproperlyConfigured("OPENAI_HTTP_TRANSPORT must be 'aiohttp' or 'httpx'.")
MODERATION_MODEL = env_str("MODERATION_MODEL", "omni-moderation-latest")
USE_SIMULATOR = not OPENAI_API_KEY and not OPENAI_BASE_URL
# What answers when no upstream is configured: a function returning an httpx2 transport.
SIMULATOR_TRANSPORT = "chat.simulator.transport.in_process"
SIMULATOR_CHUNK_MS = env_float("SIMULATOR_CHUNK_MS", 15.0)
SIMULATOR_TTFT_MS = env_float("SIMULATOR_TTFT_MS", 300.0)

# Streaming.
STREAM_FLUSH_MS = env_float("STREAM_FLUSH_MS", 30.0)
STREAM_CHECKPOINT_S = env_float("STREAM_CHECKPOINT_S", 2.0)
# Presence: the first change of a conversation's viewers is announced at once, the ones
# within this window after it in one announcement at its end (chat/fanout/announcer.py).
PRESENCE_INTERVAL_MS = env_float("PRESENCE_INTERVAL_MS", 250.0)
STREAM_STALE_S = env_float("STREAM_STALE_S", 15.0)
STREAM_SWEEP_INTERVAL_S = env_float("STREAM_SWEEP_INTERVAL_S", 10.0)
STREAM_HISTORY_MESSAGES = env_int("STREAM_HISTORY_MESSAGES", 40)

# The runner splits the upstream's SSE itself (chat/upstream/chunks.py); 0: the SDK's own
# stream class.
OPENAI_CHUNK_STREAM = env_bool("OPENAI_CHUNK_STREAM", True)
# Daphne's, autobahn's and Twisted's internals (chat/realtime/direct_send.py): frames written
# straight to sockets, the close codes 1009/1012/1013, the unsent-bytes bound. Off: the
# ASGI path only.
DAPHNE_INTERNALS = env_bool("DAPHNE_INTERNALS", True)

# The garbage collector's thresholds in a server process (chat/lifecycle/gc_tuning.py).
GC_THRESHOLDS = tuple(int(x) for x in env_str("GC_THRESHOLDS", "2000,10,100").split(","))
if len(GC_THRESHOLDS) != 3 or min(GC_THRESHOLDS) < 1:
    raise ImproperlyConfigured("GC_THRESHOLDS must be three positive integers, e.g. 2000,10,100.")

# Limits.
WS_MAX_FRAME_BYTES = env_int("WS_MAX_FRAME_BYTES", 256 * 1024)
PROMPT_MAX_CHARS = env_int("PROMPT_MAX_CHARS", 32_000)
PROMPTS_PER_MINUTE = env_int("PROMPTS_PER_MINUTE", 20)
WS_FRAMES_PER_SECOND = env_float("WS_FRAMES_PER_SECOND", 10.0)  # sustained, per socket
WS_FRAME_BURST = env_int("WS_FRAME_BURST", 30)
WS_MAX_CONNECTIONS_PER_USER = env_int("WS_MAX_CONNECTIONS_PER_USER", 20)
# Bytes queued for one socket whose peer is not reading before it gets no more live
# frames (it is sent a fresh snapshot once it has read them); under daphne (below).
WS_MAX_UNSENT_BYTES = env_int("WS_MAX_UNSENT_BYTES", 1024 * 1024)
# Bytes of live events after which an event stream ends (EventSource reconnects and resumes
# from Last-Event-ID): what a reader that stopped reading can make the server hold.
SSE_MAX_STREAM_BYTES = env_int("SSE_MAX_STREAM_BYTES", 1024 * 1024)
MAX_GENERATIONS_PER_USER = env_int("MAX_GENERATIONS_PER_USER", 3)  # at once, all conversations
DAILY_TOKEN_QUOTA = env_int("DAILY_TOKEN_QUOTA", 200_000)  # per user per UTC day; 0: none
OPENAI_MAX_TOKENS = env_int("OPENAI_MAX_TOKENS", 2048)  # answer cap, also what is reserved
LOGIN_ATTEMPTS_PER_15_MIN = env_int("LOGIN_ATTEMPTS_PER_15_MIN", 10)  # per username and per IP
DATA_UPLOAD_MAX_MEMORY_SIZE = env_int("API_MAX_BODY_BYTES", 64 * 1024)

LOGIN_URL = "/accounts/login/"
LOGIN_REDIRECT_URL = "/"
LOGOUT_REDIRECT_URL = "/accounts/login/"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
# Where collectstatic puts the files nginx serves (deploy/nginx.conf); deploy/cluster.py
# reads STATIC_ROOT by the same rule.
STATIC_ROOT = Path(env_str("STATIC_ROOT") or BASE_DIR / "staticfiles")
# Serve app static files even where `collectstatic` has not run (make run, tests); the
# Docker image collects them, and collected files are served from STATIC_ROOT.
WHITENOISE_USE_FINDERS = True

SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SAMESITE = "Lax"
# Production (DEBUG off) assumes HTTPS: cookies only over TLS. Plain-HTTP setups (the
# compose demo, tests) turn it off explicitly with DJANGO_SECURE_COOKIES=0.
SESSION_COOKIE_SECURE = env_bool("DJANGO_SECURE_COOKIES", not DEBUG)
CSRF_COOKIE_SECURE = SESSION_COOKIE_SECURE
SECURE_SSL_REDIRECT = env_bool("DJANGO_SSL_REDIRECT", False)
SECURE_REDIRECT_EXEMPT = [r"^healthz$", r"^readyz$", r"^metrics$"]
SECURE_HSTS_SECONDS = env_int("DJANGO_HSTS_SECONDS", 0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("DJANGO_HSTS_INCLUDE_SUBDOMAINS", False)
SECURE_HSTS_PRELOAD = env_bool("DJANGO_HSTS_PRELOAD", False)
if env_bool("DJANGO_BEHIND_TLS_PROXY", False):
    # The proxy terminates TLS and says so; only set this behind a proxy that
    # overwrites the header (docs/deploy.md).
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
X_FRAME_OPTIONS = "DENY"
# Scripts only from our own origin: no inline script, no eval, nothing from a CDN.
# Inline style attributes stay allowed for the admin's widgets.
CONTENT_SECURITY_POLICY = env_str(
    "CONTENT_SECURITY_POLICY",
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; connect-src 'self'; object-src 'none'; base-uri 'self'; "
    "form-action 'self'; frame-ancestors 'none'",
)

# Login attempts and other cross-request counters: shared through Redis when present.
CACHES = {
    "default": (
        {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": REDIS_URL,
            "KEY_PREFIX": CHANNEL_PREFIX,
        }
        if REDIS_URL
        else {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}
    )
}

LOG_LEVEL = env_str("LOG_LEVEL", "INFO")
# json: one object a line with request/connection/stream ids (production); plain: for people.
LOG_FORMAT = env_str("LOG_FORMAT", "plain" if DEBUG else "json")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {"context": {"()": "chat.ops.logs.ContextFilter"}},
    "formatters": {
        "plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s %(ids)s"},
        "json": {"()": "chat.ops.logs.JsonFormatter"},
    },
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "formatter": "json" if LOG_FORMAT == "json" else "plain",
            "filters": ["context"],
        }
    },
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    "loggers": {"django.channels.server": {"level": "WARNING"}},
}

# Operations.
DRAIN_S = env_float("DRAIN_S", 30.0)  # on SIGTERM: how long running answers may finish
# /metrics answers these client addresses (scrape each process directly; nginx hides the
# path), or anyone presenting `Authorization: Bearer <METRICS_TOKEN>` when it is set.
METRICS_ALLOWED_IPS = [
    ip.strip() for ip in env_str("METRICS_ALLOWED_IPS", "127.0.0.1,::1").split(",") if ip.strip()
]
METRICS_TOKEN = env_str("METRICS_TOKEN")

# --- Accounts (UI) ---
# Anyone who can reach the site may create an account at /accounts/signup/ while this is
# on; turn it off for a private deployment (accounts then come from the admin,
# `createsuperuser` or `demo`). The sign-in page links to sign-up only when it is on.
SIGNUP_ENABLED = env_bool("SIGNUP_ENABLED", True)
SIGNUPS_PER_HOUR_PER_ADDRESS = env_int("SIGNUPS_PER_HOUR_PER_ADDRESS", 10)  # 0: no limit
TEMPLATES[0]["OPTIONS"]["context_processors"].append("chat.web.accounts.signup_context")
# Django's standard password checks, for sign-up (and createsuperuser, password changes).
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

# --- Moderation --- (docs/moderation.md; MODERATION_MODEL is set above)
# Moderate every finished answer (off: no calls; member reports still reach the queue).
MODERATION_ENABLED = env_bool("MODERATION_ENABLED", True)
# 1: server processes only open each finished answer's case, and a process of its own,
# `manage.py moderate_pending --watch`, calls moderation (docker-compose runs one). 0:
# each server process calls moderation for the answers it stored.
MODERATION_WORKER = env_bool("MODERATION_WORKER", False)
# Hide answers the model flagged from viewers until staff decide.
MODERATION_HOLD_FLAGGED = env_bool("MODERATION_HOLD_FLAGGED", False)
# Timeout of one moderation call, s (no SDK retries: failed calls are retried below).
MODERATION_TIMEOUT_S = env_float("MODERATION_TIMEOUT_S", 10.0)
# How often each server process retries pending cases, s (0 turns the loop off).
MODERATION_RETRY_INTERVAL_S = env_float("MODERATION_RETRY_INTERVAL_S", 30.0)
# Wait after a case's first failed call, s; doubles per failure up to an hour.
MODERATION_RETRY_BACKOFF_S = env_float("MODERATION_RETRY_BACKOFF_S", 10.0)
