"""kf settings: one module, every value from the environment (see README "Configuration")."""

import os
import secrets
from datetime import timedelta
from pathlib import Path

import environ

BASE_DIR = Path(__file__).resolve().parent.parent

env = environ.Env()

KF_DATA_DIR = Path(env.str("KF_DATA_DIR", default=str(BASE_DIR / "var"))).resolve()
KF_DATA_DIR.mkdir(parents=True, exist_ok=True)
KF_PROJECTS_ROOT = Path(env.str("KF_PROJECTS_ROOT", default=str(KF_DATA_DIR / "projects"))).resolve()


def _generated_secret(filename: str, nbytes: int = 50) -> str:
    """Read a secret kept in KF_DATA_DIR, creating it (mode 0600) on first use.

    O_EXCL makes concurrent first starts (daphne + worker) agree on one value.
    """
    path = KF_DATA_DIR / filename
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        value = path.read_text().strip()
        if not value:
            raise RuntimeError(f"{path} is empty; delete it to generate a new secret")
        return value
    value = secrets.token_urlsafe(nbytes)
    with os.fdopen(fd, "w") as fh:
        fh.write(value + "\n")
    return value


SECRET_KEY = env.str("SECRET_KEY", default="") or _generated_secret("secret_key")
DEBUG = env.bool("KF_DEBUG", default=False)
ALLOWED_HOSTS = env.list("KF_ALLOWED_HOSTS", default=["localhost", "127.0.0.1"])
CSRF_TRUSTED_ORIGINS = env.list("KF_CSRF_TRUSTED_ORIGINS", default=[])

# Behind TLS (a proxy in front of daphne): secure cookies, HSTS and the https redirect.
KF_HTTPS = env.bool("KF_HTTPS", default=False)
SESSION_COOKIE_SECURE = KF_HTTPS
CSRF_COOKIE_SECURE = KF_HTTPS
SECURE_SSL_REDIRECT = KF_HTTPS
SECURE_HSTS_SECONDS = 31536000 if KF_HTTPS else 0
SECURE_HSTS_INCLUDE_SUBDOMAINS = KF_HTTPS
SECURE_HSTS_PRELOAD = KF_HTTPS
if KF_HTTPS:
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SECURE_REDIRECT_EXEMPT = [r"^healthz$"]
X_FRAME_OPTIONS = "DENY"
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "drf_spectacular",
    "channels",
    "django_otp",
    "django_otp.plugins.otp_totp",
    "allauth",
    "allauth.account",
    "api",
    "accounts",
    "streams",
    "projects",
    "secrets_app",
    "llm",
    "shell",
    "budget",
    "receipts",
    "agent",
]

MIDDLEWARE = [
    "api.middleware.RequestIdMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "accounts.middleware.SessionTrackingMiddleware",
    "django_otp.middleware.OTPMiddleware",
    "allauth.account.middleware.AccountMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "kfsite.urls"
ASGI_APPLICATION = "kfsite.asgi.application"
WSGI_APPLICATION = None

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

DATABASES = {
    "default": env.db_url("DATABASE_URL", default=f"sqlite:///{KF_DATA_DIR / 'kf.sqlite3'}"),
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # WAL lets readers (SSE followers) run beside the writer; the busy timeout rides out
    # short write bursts from the in-process task runner.
    DATABASES["default"].setdefault("OPTIONS", {}).update(
        {
            "timeout": 20,
            "transaction_mode": "IMMEDIATE",
            # mmap: searches read file contents straight from the OS page cache, not copied
            # through SQLite's own small page cache.
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA mmap_size=1073741824;",
        }
    )
    # Tests use a file database so the in-process runner's threads and a live server share it.
    DATABASES["default"]["TEST"] = {"NAME": str(KF_DATA_DIR / "test.sqlite3")}
else:
    DATABASES["default"].setdefault("CONN_MAX_AGE", 0)
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

REDIS_URL = env.str("REDIS_URL", default="")

if REDIS_URL:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": REDIS_URL}}
    CHANNEL_LAYERS = {
        "default": {"BACKEND": "channels_redis.core.RedisChannelLayer", "CONFIG": {"hosts": [REDIS_URL]}}
    }
else:
    # Embedded shape: one process, so a process-local cache and channel layer are the real thing.
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache", "LOCATION": "kf"}}
    CHANNEL_LAYERS = {"default": {"BACKEND": "streams.layers.LocalChannelLayer"}}

# Tasks: Celery over Redis when REDIS_URL is set, else a thread pool inside the web process
# (api.tasking). Never Celery's eager mode, which would tie a job to the request that started it.
CELERY_BROKER_URL = REDIS_URL or "memory://"
CELERY_TASK_ALWAYS_EAGER = False
CELERY_TASK_DEFAULT_QUEUE = env.str("KF_CELERY_QUEUE", default="kf")
CELERY_TASK_ACKS_LATE = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_IGNORE_RESULT = True
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_BEAT_SCHEDULE = {
    "purge-deleted-accounts": {
        "task": "accounts.tasks.purge_deleted_accounts",
        "schedule": timedelta(hours=1),
    },
    "purge-expired-sessions": {
        "task": "accounts.tasks.purge_expired_sessions",
        "schedule": timedelta(hours=6),
    },
    "purge-expired-exports": {
        "task": "accounts.tasks.purge_expired_exports",
        "schedule": timedelta(hours=1),
    },
    "reap-lost-agent-runs": {
        "task": "agent.tasks.reap",
        "schedule": timedelta(seconds=60),
    },
}
KF_TASK_THREADS = env.int("KF_TASK_THREADS", default=4)
KF_SSE_POLL_SECONDS = env.float("KF_SSE_POLL_SECONDS", default=2.0)
KF_SSE_HEARTBEAT_SECONDS = env.float("KF_SSE_HEARTBEAT_SECONDS", default=15.0)
# A running job's worker writes a heartbeat this often; a job whose heartbeat is older than
# KF_JOB_STALE_SECONDS lost its worker and is ended as failed by the reaper.
KF_JOB_HEARTBEAT_SECONDS = env.float("KF_JOB_HEARTBEAT_SECONDS", default=10.0)
KF_JOB_STALE_SECONDS = env.float("KF_JOB_STALE_SECONDS", default=120.0)

AUTH_USER_MODEL = "accounts.User"
AUTHENTICATION_BACKENDS = ["accounts.backends.EmailBackend"]
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator", "OPTIONS": {"min_length": 10}},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
    {"NAME": "accounts.validators.BreachedPatternValidator"},
]
PASSWORD_HASHERS = [
    "django.contrib.auth.hashers.Argon2PasswordHasher",
    "django.contrib.auth.hashers.PBKDF2PasswordHasher",
]
LOGIN_URL = "/login"

SESSION_ENGINE = "django.contrib.sessions.backends.db"
SESSION_COOKIE_AGE = env.int("KF_SESSION_AGE_SECONDS", default=14 * 24 * 3600)
SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SAMESITE = "Lax"
CSRF_FAILURE_VIEW = "api.handlers.csrf_failure"

# allauth keeps the address book (EmailAddress: verified / primary); kf's own API drives it.
ACCOUNT_LOGIN_METHODS = {"email"}
ACCOUNT_SIGNUP_FIELDS = ["email*", "password1*"]
ACCOUNT_USER_MODEL_USERNAME_FIELD = None
ACCOUNT_EMAIL_VERIFICATION = "mandatory"
ACCOUNT_UNIQUE_EMAIL = True

OTP_TOTP_ISSUER = "kf"
OTP_TOTP_THROTTLE_FACTOR = 1

# Security knobs of the accounts app.
KF_VERIFY_TOKEN_HOURS = env.int("KF_VERIFY_TOKEN_HOURS", default=48)
PASSWORD_RESET_TIMEOUT = env.int("KF_RESET_TOKEN_SECONDS", default=3600)
KF_RECENT_AUTH_SECONDS = env.int("KF_RECENT_AUTH_SECONDS", default=3600)
KF_LOGIN_FAILURES_PER_ACCOUNT = env.int("KF_LOGIN_FAILURES_PER_ACCOUNT", default=10)
KF_LOGIN_FAILURES_PER_IP = env.int("KF_LOGIN_FAILURES_PER_IP", default=50)
KF_LOGIN_FAILURE_WINDOW_SECONDS = env.int("KF_LOGIN_FAILURE_WINDOW_SECONDS", default=900)
KF_EMAIL_REQUESTS_PER_HOUR = env.int("KF_EMAIL_REQUESTS_PER_HOUR", default=5)
KF_AVATAR_MAX_BYTES = env.int("KF_AVATAR_MAX_BYTES", default=2 * 1024 * 1024)
KF_DELETE_GRACE_DAYS = 30
KF_EXPORT_LINK_SECONDS = env.int("KF_EXPORT_LINK_SECONDS", default=3600)
KF_API_KEY_TOUCH_SECONDS = 60
KF_SESSION_TOUCH_SECONDS = 60

DATA_UPLOAD_MAX_MEMORY_SIZE = env.int("KF_MAX_BODY_BYTES", default=5 * 1024 * 1024)
FILE_UPLOAD_MAX_MEMORY_SIZE = DATA_UPLOAD_MAX_MEMORY_SIZE

if env.str("EMAIL_URL", default=""):
    vars().update(env.email_url("EMAIL_URL"))
else:
    EMAIL_BACKEND = "django.core.mail.backends.filebased.EmailBackend"
    EMAIL_FILE_PATH = str(KF_DATA_DIR / "mail")
DEFAULT_FROM_EMAIL = env.str("KF_FROM_EMAIL", default="kf <kf@localhost>")
KF_BASE_URL = env.str("KF_BASE_URL", default="http://127.0.0.1:8000").rstrip("/")

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "accounts.authentication.ApiKeyAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": [
        "rest_framework.permissions.IsAuthenticated",
        "accounts.permissions.ApiKeyScope",
        "accounts.permissions.AccountNotPendingDeletion",
    ],
    "DEFAULT_RENDERER_CLASSES": [
        "rest_framework.renderers.JSONRenderer",
        "rest_framework.renderers.BrowsableAPIRenderer",
    ],
    "DEFAULT_PARSER_CLASSES": [
        "rest_framework.parsers.JSONParser",
        "rest_framework.parsers.FormParser",
        "rest_framework.parsers.MultiPartParser",
    ],
    "EXCEPTION_HANDLER": "api.handlers.exception_handler",
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "DEFAULT_THROTTLE_RATES": {"anon": "120/min", "user": "1200/min", "auth": "60/min"},
    "DEFAULT_THROTTLE_CLASSES": [
        "rest_framework.throttling.AnonRateThrottle",
        "rest_framework.throttling.UserRateThrottle",
    ],
    "UNAUTHENTICATED_USER": "django.contrib.auth.models.AnonymousUser",
}

SPECTACULAR_SETTINGS = {
    "TITLE": "kf API",
    "DESCRIPTION": "The self-hosted workbench for AI coding agents. Errors are "
    '`{"error": {"code", "message", "details"}}`; lists are `{"items", "next_cursor"}`.',
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
    "COMPONENT_SPLIT_REQUEST": True,
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "api.openapi.add_error_responses",
    ],
    "SERVE_PERMISSIONS": ["rest_framework.permissions.AllowAny"],
    "SERVE_AUTHENTICATION": [],
}

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = KF_DATA_DIR / "static"
STATIC_ROOT.mkdir(exist_ok=True)
# Static files are served by whitenoise straight from the apps and node_modules (no collectstatic step).
WHITENOISE_USE_FINDERS = True
MEDIA_ROOT = KF_DATA_DIR / "media"

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env.str("KF_LOG_LEVEL", default="INFO")},
    "loggers": {"django.request": {"level": "ERROR"}, "daphne": {"level": "WARNING"}},
}

# Projects: indexing and file limits, clones.
KF_INDEX_MAX_FILE_BYTES = env.int("KF_INDEX_MAX_FILE_BYTES", default=1024 * 1024)
KF_FILE_MAX_BYTES = env.int("KF_FILE_MAX_BYTES", default=2 * 1024 * 1024)
KF_CLONE_TIMEOUT_SECONDS = env.int("KF_CLONE_TIMEOUT_SECONDS", default=300)
KF_CLONE_STALL_SECONDS = env.int("KF_CLONE_STALL_SECONDS", default=30)
KF_SEARCH_TIMEOUT_MS = env.int("KF_SEARCH_TIMEOUT_MS", default=2000)

# Secrets (DESIGN decision 10): the versioned master keys that wrap every secret's data key, never in
# the database. KF_MASTER_KEY set: "v1:<base64 32 bytes>[,v2:<…>]"; unset: a key file under
# KF_DATA_DIR, created 0600 on first use, to which rotation adds versions.
KF_MASTER_KEY = env.str("KF_MASTER_KEY", default="")
KF_SECRET_MAX_BYTES = env.int("KF_SECRET_MAX_BYTES", default=64 * 1024)

# Receipts (DESIGN decision 8): the Ed25519 key that signs each workspace's log head, never in the
# database. KF_SIGNING_KEY set: base64 of the 32-byte private seed; unset: a key file under KF_DATA_DIR
# (receipts_signing_key), created 0600 on first use.
KF_SIGNING_KEY = env.str("KF_SIGNING_KEY", default="")

# The chat model (OpenAI-compatible): unset means "no model configured", a clear error.
KF_LLM_BASE_URL = env.str("KF_LLM_BASE_URL", default="")
KF_LLM_API_KEY = env.str("KF_LLM_API_KEY", default="")
KF_LLM_MODEL = env.str("KF_LLM_MODEL", default="")
KF_LLM_TIMEOUT_SECONDS = env.float("KF_LLM_TIMEOUT_SECONDS", default=60.0)
# kf retries a failed model call itself (429, 408, 409, 5xx, timeouts, dropped connections): this many
# attempts in all, waits growing from the base (exponential, full jitter), none longer than the cap;
# a server's Retry-After is honoured up to the cap.
KF_LLM_MAX_ATTEMPTS = env.int("KF_LLM_MAX_ATTEMPTS", default=4)
KF_LLM_RETRY_BASE_SECONDS = env.float("KF_LLM_RETRY_BASE_SECONDS", default=0.5)
KF_LLM_RETRY_MAX_WAIT_SECONDS = env.float("KF_LLM_RETRY_MAX_WAIT_SECONDS", default=30.0)
# The agent: a run ends `failed` when the model makes the same tool call (same arguments) this many
# times in a row, or repeats a pair of calls this many times (A B A B A B).
KF_AGENT_STUCK_REPEATS = env.int("KF_AGENT_STUCK_REPEATS", default=3)
# The longest answer one model call of a run may give (sent as max_tokens): the bound that lets a
# call's cost be reserved before it is made. 0: not sent (for servers that refuse max_tokens; a call's
# cost can then pass its reservation, which the budget records as overshoot).
KF_AGENT_MAX_OUTPUT_TOKENS = env.int("KF_AGENT_MAX_OUTPUT_TOKENS", default=4096)

# Shell jobs and SSH.
KF_SHELL_TIMEOUT_SECONDS = env.int("KF_SHELL_TIMEOUT_SECONDS", default=600)
KF_SHELL_MAX_TIMEOUT_SECONDS = env.int("KF_SHELL_MAX_TIMEOUT_SECONDS", default=3600)
KF_SHELL_OUTPUT_MAX_BYTES = env.int("KF_SHELL_OUTPUT_MAX_BYTES", default=4 * 1024 * 1024)
KF_SSH_CONFIG = env.str("KF_SSH_CONFIG", default=str(Path.home() / ".ssh" / "config"))
KF_SSH_KNOWN_HOSTS = env.str("KF_SSH_KNOWN_HOSTS", default=str(Path.home() / ".ssh" / "known_hosts"))
KF_SSH_PULL_MAX_BYTES = env.int("KF_SSH_PULL_MAX_BYTES", default=50 * 1024 * 1024)
KF_SSH_CONNECT_TIMEOUT_SECONDS = env.float("KF_SSH_CONNECT_TIMEOUT_SECONDS", default=10.0)
