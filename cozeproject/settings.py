"""Settings for cozeproject, read from the environment (and a `.env` file; the real environment wins).

Every variable is documented in README.md. Bad values fail loudly with ImproperlyConfigured at
start-up rather than surfacing later as odd behaviour.
"""

import ipaddress
import os
import re
import tempfile
from decimal import Decimal, InvalidOperation
from pathlib import Path

import environ
from corsheaders.defaults import default_headers as cors_default_headers
from django.core.exceptions import ImproperlyConfigured

from chat.domain.redaction import parse_kinds as parse_redaction_kinds

BASE_DIR = Path(__file__).resolve().parent.parent

env = environ.Env()
# Only when there is one: without it, django-environ logs "….env not found" at INFO on every command.
if (BASE_DIR / ".env").is_file():
    environ.Env.read_env(BASE_DIR / ".env", overwrite=False)


def env_bool(name: str, default: bool) -> bool:
    raw = env.str(name, default="")
    if raw == "":
        return default
    lowered = raw.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off"}:
        return False
    raise ImproperlyConfigured(f"{name} must be a boolean (1/0, true/false), got {raw!r}")


def env_number(name: str, default: float, *, minimum: float = 0, cast=float):
    raw = env.str(name, default="")
    if raw == "":
        return default
    try:
        value = cast(raw)
    except ValueError:
        raise ImproperlyConfigured(f"{name} must be a number, got {raw!r}") from None
    if value < minimum:
        raise ImproperlyConfigured(f"{name} must be at least {minimum}, got {raw!r}")
    return value


def env_list(name: str) -> list[str]:
    return [item.strip() for item in env.str(name, default="").split(",") if item.strip()]


def parse_trusted_proxies(items: list[str]) -> list[str]:
    """CHAT_TRUSTED_PROXIES as network strings (`10.0.0.0/8`, `127.0.0.1/32`); ImproperlyConfigured
    on anything that is not an IP address or range, so a typo can't quietly trust nothing (or all)."""
    networks = []
    for item in items:
        try:
            networks.append(str(ipaddress.ip_network(item, strict=False)))
        except ValueError:
            raise ImproperlyConfigured(
                f"CHAT_TRUSTED_PROXIES must be IP addresses or ranges (10.0.0.0/8), got {item!r}"
            ) from None
    return networks


BOT_NAME_RE = re.compile(r"^[A-Za-z0-9_.:/-]{1,64}$")


def parse_bot_names(raw: str, allowed_bot_ids: list[str]) -> dict[str, str]:
    """`name=bot_id,…` (COZE_BOT_NAMES) as {name: bot_id}; ImproperlyConfigured on a bad item,
    a duplicate name, a name that is another bot's id, or a bot that is not allowed."""
    names: dict[str, str] = {}
    for item in (part.strip() for part in raw.split(",")):
        if not item:
            continue
        name, sep, bot_id = (piece.strip() for piece in item.partition("="))
        if not sep or not name or not bot_id:
            raise ImproperlyConfigured(f"COZE_BOT_NAMES items must look like name=bot_id, got {item!r}")
        if not BOT_NAME_RE.match(name):
            raise ImproperlyConfigured(
                f"COZE_BOT_NAMES: name {name!r} must be 1 to 64 characters of A-Z a-z 0-9 _ . : / -"
            )
        if bot_id not in allowed_bot_ids:
            raise ImproperlyConfigured(
                f"COZE_BOT_NAMES: bot {bot_id!r} (named {name!r}) is neither COZE_BOT_ID nor in COZE_ALLOWED_BOT_IDS"
            )
        if name in names:
            raise ImproperlyConfigured(f"COZE_BOT_NAMES: name {name!r} is given twice")
        if name in allowed_bot_ids and name != bot_id:
            raise ImproperlyConfigured(f"COZE_BOT_NAMES: name {name!r} is the id of another bot")
        names[name] = bot_id
    return names


DEBUG = env_bool("DJANGO_DEBUG", False)

SECRET_KEY = env.str("DJANGO_SECRET_KEY", default="")
if not DEBUG:
    if not SECRET_KEY:
        raise ImproperlyConfigured(
            "DJANGO_SECRET_KEY is not set. Set it for production, or set DJANGO_DEBUG=1 for local development."
        )
    # Django's own deploy check (security.W009) calls such a key weak; here it stops the start.
    if len(SECRET_KEY) < 50 or len(set(SECRET_KEY)) < 5 or SECRET_KEY.startswith("django-insecure-"):
        raise ImproperlyConfigured(
            "DJANGO_SECRET_KEY is too weak for production: use at least 50 random characters, e.g. "
            "python -c 'import secrets; print(secrets.token_urlsafe(50))'."
        )
SECRET_KEY = SECRET_KEY or "django-insecure-development-key-do-not-use-in-production"

LOCAL_HOSTS = ["localhost", "127.0.0.1", "[::1]", "testserver"]
ALLOWED_HOSTS = env_list("DJANGO_ALLOWED_HOSTS") or (LOCAL_HOSTS if DEBUG else [])
if not ALLOWED_HOSTS:
    # Django would start and answer every request "Bad Request (400)", the reason only in its log.
    raise ImproperlyConfigured(
        "DJANGO_ALLOWED_HOSTS is not set. Set it to the host names this server answers to "
        "(e.g. chat.example.com), or set DJANGO_DEBUG=1 for local development."
    )
if DEBUG:
    public_hosts = [host for host in ALLOWED_HOSTS if host not in LOCAL_HOSTS]
    if public_hosts:
        raise ImproperlyConfigured(
            f"DJANGO_DEBUG=1 with public DJANGO_ALLOWED_HOSTS {public_hosts}: debug mode leaks internals; "
            "turn debug off for a public deployment."
        )

# --- Coze -------------------------------------------------------------------------------------

COZE_API_TOKEN = env.str("COZE_API_TOKEN", default="")
# OAuth JWT app authorisation (personal tokens expire within a month; app tokens are refreshed).
COZE_OAUTH_APP_ID = env.str("COZE_OAUTH_APP_ID", default="")
COZE_OAUTH_KEY_ID = env.str("COZE_OAUTH_KEY_ID", default="")
COZE_OAUTH_PRIVATE_KEY = env.str("COZE_OAUTH_PRIVATE_KEY", default="", multiline=True)
_private_key_file = env.str("COZE_OAUTH_PRIVATE_KEY_FILE", default="")
if _private_key_file and not COZE_OAUTH_PRIVATE_KEY:
    try:
        COZE_OAUTH_PRIVATE_KEY = Path(_private_key_file).read_text()
    except OSError as exc:
        raise ImproperlyConfigured(f"COZE_OAUTH_PRIVATE_KEY_FILE {_private_key_file!r} can't be read: {exc}") from None
if COZE_OAUTH_APP_ID and not (COZE_OAUTH_KEY_ID and COZE_OAUTH_PRIVATE_KEY):
    raise ImproperlyConfigured(
        "COZE_OAUTH_APP_ID needs COZE_OAUTH_KEY_ID and COZE_OAUTH_PRIVATE_KEY (or COZE_OAUTH_PRIVATE_KEY_FILE)."
    )
COZE_OAUTH_TOKEN_TTL = env_number("COZE_OAUTH_TOKEN_TTL", 3600, minimum=60, cast=int)
# What COZE_BASE_URL is: Coze's cloud (coze.cn, coze.com) or a self-hosted Coze Studio, which takes
# personal access tokens only and can't continue a chat with local tool outputs (docs/api.md §14).
COZE_PLATFORM = env.str("COZE_PLATFORM", default="coze").strip().lower()
if COZE_PLATFORM not in ("coze", "studio"):
    raise ImproperlyConfigured(f"COZE_PLATFORM must be coze or studio, got {COZE_PLATFORM!r}")
if COZE_PLATFORM == "studio" and COZE_OAUTH_APP_ID:
    raise ImproperlyConfigured(
        "COZE_PLATFORM=studio with COZE_OAUTH_APP_ID: Coze Studio takes personal access tokens only (COZE_API_TOKEN)."
    )
COZE_DEMO_MODE = not (COZE_API_TOKEN or COZE_OAUTH_APP_ID)
# Demo mode outside debug is a public demo (anonymous chat with the simulator): only on purpose.
CHAT_DEMO = env_bool("CHAT_DEMO", False)
if COZE_DEMO_MODE and not (DEBUG or CHAT_DEMO):
    raise ImproperlyConfigured(
        "COZE_API_TOKEN is not set. Set it (and COZE_BOT_ID) to talk to Coze, set CHAT_DEMO=1 to serve "
        "the built-in Coze simulator as a public demo, or set DJANGO_DEBUG=1 for local development."
    )
if CHAT_DEMO and not COZE_DEMO_MODE:
    raise ImproperlyConfigured("CHAT_DEMO=1 with COZE_API_TOKEN or COZE_OAUTH_APP_ID set: choose one.")
COZE_BASE_URL = env.str("COZE_BASE_URL", default="https://api.coze.cn").rstrip("/")
COZE_BOT_ID = env.str("COZE_BOT_ID", default="")
if not COZE_BOT_ID:
    if not COZE_DEMO_MODE:
        raise ImproperlyConfigured("COZE_BOT_ID is required when COZE_API_TOKEN or COZE_OAUTH_APP_ID is set.")
    COZE_BOT_ID = "7000000000000000001"
COZE_ALLOWED_BOT_IDS = [COZE_BOT_ID, *[bot for bot in env_list("COZE_ALLOWED_BOT_IDS") if bot != COZE_BOT_ID]]
# Readable model names for the OpenAI-compatible API (name=bot_id,…); bot ids work as names too.
COZE_BOT_NAMES = parse_bot_names(env.str("COZE_BOT_NAMES", default=""), COZE_ALLOWED_BOT_IDS)
COZE_USER_ID = env.str("COZE_USER_ID", default="default_user")
COZE_STREAM_IDLE_TIMEOUT = env_number("COZE_STREAM_IDLE_TIMEOUT", 60.0, minimum=0.1)
COZE_CONNECT_TIMEOUT = env_number("COZE_CONNECT_TIMEOUT", 5.0, minimum=0.1)
COZE_MAX_CONNECTIONS = env_number("COZE_MAX_CONNECTIONS", 10_000, minimum=1, cast=int)
# Token delay of the built-in simulator in demo mode, so the browser page shows a typing effect.
COZE_SIMULATOR_TOKEN_DELAY_MS = env_number("COZE_SIMULATOR_TOKEN_DELAY_MS", 40.0)

# --- Chat -------------------------------------------------------------------------------------

CHAT_ALLOW_ANONYMOUS = env_bool("CHAT_ALLOW_ANONYMOUS", COZE_DEMO_MODE or DEBUG)
CHAT_MAX_MESSAGE_CHARS = env_number("CHAT_MAX_MESSAGE_CHARS", 32000, minimum=1, cast=int)
CHAT_MAX_BODY_BYTES = 1024 * 1024
# File uploads (POST /api/files) have their own limit instead of the 1 MiB body limit.
CHAT_MAX_UPLOAD_BYTES = env_number("CHAT_MAX_UPLOAD_BYTES", 20 * 1024 * 1024, minimum=1, cast=int)
# What the multipart framing around one file may add to the body (boundaries, part headers).
CHAT_UPLOAD_BODY_OVERHEAD = 64 * 1024
# MIME types accepted for upload; `image/*` style patterns allowed. Default: images, PDF, plain
# text and Office documents, each also checked against the file's first bytes.
CHAT_UPLOAD_TYPES = env_list("CHAT_UPLOAD_TYPES") or [
    "image/png",
    "image/jpeg",
    "image/gif",
    "image/webp",
    "image/bmp",
    "application/pdf",
    "text/plain",
    "text/markdown",
    "text/csv",
    "application/msword",
    "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
    "application/vnd.ms-excel",
    "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
    "application/vnd.ms-powerpoint",
    "application/vnd.openxmlformats-officedocument.presentationml.presentation",
]
CHAT_UPLOAD_TYPES = [item.lower() for item in CHAT_UPLOAD_TYPES]
for _upload_type in CHAT_UPLOAD_TYPES:
    if _upload_type.count("/") != 1 or not all(_upload_type.split("/")):
        raise ImproperlyConfigured(
            f"CHAT_UPLOAD_TYPES must be MIME types such as image/png or image/*, got {_upload_type!r}"
        )
# Show image attachments as thumbnails in the admin transcript. Off by default: the thumbnail
# loads the image from its URL, which the operator's browser then fetches (and Coze URLs expire).
CHAT_ADMIN_IMAGE_THUMBNAILS = env_bool("CHAT_ADMIN_IMAGE_THUMBNAILS", False)
CHAT_SSE_HEARTBEAT = env_number("CHAT_SSE_HEARTBEAT", 15.0, minimum=0.05)


def env_price(name: str) -> Decimal | None:
    raw = env.str(name, default="").strip()
    try:
        price = Decimal(raw) if raw else None
    except InvalidOperation:
        raise ImproperlyConfigured(f"{name} must be a decimal number, got {raw!r}") from None
    if price is not None and (not price.is_finite() or price < 0):
        raise ImproperlyConfigured(f"{name} must be a price of zero or more, got {raw!r}")
    return price


# Prices of 1,000 Coze tokens in your currency, for the admin's estimated spend: input and output
# tokens each, or one price for both (CHAT_TOKEN_PRICE_PER_1K, used where the other is unset).
# Unset: the admin shows no cost, and says why.
CHAT_TOKEN_PRICE_PER_1K = env_price("CHAT_TOKEN_PRICE_PER_1K")
CHAT_PRICE_PER_1K_INPUT_TOKENS = env_price("CHAT_PRICE_PER_1K_INPUT_TOKENS")
CHAT_PRICE_PER_1K_OUTPUT_TOKENS = env_price("CHAT_PRICE_PER_1K_OUTPUT_TOKENS")
# Retention (docs/admin.md, "Retention"): days messages are kept, each by its own age, when an
# API client has no window of its own (unset: kept); `prune_chat_data` deletes what is older.
CHAT_RETENTION_DAYS = env_number("CHAT_RETENTION_DAYS", 0, minimum=1, cast=int) or None
# Uploaded files never attached to a message are deleted by `prune_chat_data` after this long.
CHAT_ORPHAN_FILE_HOURS = env_number("CHAT_ORPHAN_FILE_HOURS", 24.0, minimum=1)
# Ratings go to Coze's feedback API through an outbox (sessions_admin/feedback_outbox.py): each
# worker's sender looks for due rows this often (and at once after a rating made in its process).
CHAT_FEEDBACK_POLL_SECONDS = env_number("CHAT_FEEDBACK_POLL_SECONDS", 5.0, minimum=0.05)
# Personal data replaced by placeholders in what is stored (docs/api.md §15): a comma list of
# emails, phones, cards. What is sent to Coze is unchanged.
try:
    CHAT_REDACT = parse_redaction_kinds(env.str("CHAT_REDACT", default=""))
except ValueError as exc:
    raise ImproperlyConfigured(f"CHAT_REDACT: {exc}") from None
# /metrics tells anyone who can read it the traffic, error rates, bot ids and token spend, so
# outside debug it is closed unless a scraper token is set (CHAT_METRICS_TOKEN: Bearer required)
# or the operator opens it on purpose (CHAT_METRICS_PUBLIC=1, e.g. behind nginx's allow-list).
CHAT_METRICS_TOKEN = env.str("CHAT_METRICS_TOKEN", default="")
CHAT_METRICS_PUBLIC = env_bool("CHAT_METRICS_PUBLIC", DEBUG and not CHAT_METRICS_TOKEN)
if CHAT_METRICS_PUBLIC and CHAT_METRICS_TOKEN:
    raise ImproperlyConfigured(
        "CHAT_METRICS_PUBLIC=1 with CHAT_METRICS_TOKEN set: choose one (a token, or an open /metrics)."
    )
# Per-owner limits (0 turns a limit off); shared between workers through Redis when configured.
# They are the defaults of API clients that have no limit of their own (see chat/access/admission.py).
CHAT_RATE_LIMIT_PER_MINUTE = env_number("CHAT_RATE_LIMIT_PER_MINUTE", 600, minimum=0, cast=int)
# 200 = 10 requests a second (600 a minute) times replies of about 20 s (Little's law): a backend serving
# many end users through one key meets its rate limit before this one, not the other way round.
CHAT_MAX_CONCURRENT_STREAMS = env_number("CHAT_MAX_CONCURRENT_STREAMS", 200, minimum=0, cast=int)
# Failed API-key authentications one client address may make in a minute; after that, keys from it
# that are not ours get `429 rate_limited` without a database lookup (valid keys still work).
CHAT_AUTH_FAILURES_PER_MINUTE = env_number("CHAT_AUTH_FAILURES_PER_MINUTE", 20, minimum=0, cast=int)
# Such 429s a blocked address gets a second from a worker; the others wait their turn (chat/access/auth.py),
# so a client looping on wrong keys can't keep the server busy however many connections it opens.
CHAT_AUTH_BLOCKED_RATE = env_number("CHAT_AUTH_BLOCKED_RATE", 10.0, minimum=0)
# Proxies in front of the workers (IP addresses or CIDR ranges). A request or WebSocket from one of
# them is from the address its X-Forwarded-For names, read from the right past these proxies; from
# any other peer, that header is ignored. The address the wrong-key limit counts. (cozeproject/asgi.py)
CHAT_TRUSTED_PROXIES = parse_trusted_proxies(env_list("CHAT_TRUSTED_PROXIES"))
# Tokens each reply in flight is assumed to cost against a budget until the client has replies
# this month (then its average reply is used); see chat/access/admission.py.
CHAT_BUDGET_RESERVE_TOKENS = env_number("CHAT_BUDGET_RESERVE_TOKENS", 1000, minimum=0, cast=int)
# Budget alerts: POSTed here when a client's use crosses a threshold (percent of a budget).
CHAT_BUDGET_ALERT_WEBHOOK = env.str("CHAT_BUDGET_ALERT_WEBHOOK", default="")
try:
    CHAT_BUDGET_ALERT_THRESHOLDS = sorted(
        {int(item) for item in env_list("CHAT_BUDGET_ALERT_THRESHOLDS") or ["80", "95", "100"]}
    )
except ValueError:
    raise ImproperlyConfigured("CHAT_BUDGET_ALERT_THRESHOLDS must be a comma list of whole percentages") from None
if any(not 0 < threshold <= 1000 for threshold in CHAT_BUDGET_ALERT_THRESHOLDS):
    raise ImproperlyConfigured("CHAT_BUDGET_ALERT_THRESHOLDS must be percentages between 1 and 1000")
# Threads that run the chat service's database calls; each keeps one connection.
CHAT_DB_THREADS = env_number("CHAT_DB_THREADS", 4, minimum=1, cast=int)
# How long a reply paused for the client's local tools (Coze's API, docs/api.md §13) waits for
# their outputs, its session busy meanwhile, before it ends failed.
CHAT_TOOL_OUTPUT_TIMEOUT = env_number("CHAT_TOOL_OUTPUT_TIMEOUT", 600.0, minimum=1)
# A session lock not renewed for this long belongs to a crashed worker and may be taken over. A
# running reply's worker renews it every third of it (chat.turn.leases), however quiet the reply,
# and every worker ends the replies whose lease lapsed (as interrupted) within 10 s after.
CHAT_SESSION_LOCK_TTL = env_number("CHAT_SESSION_LOCK_TTL", 30.0, minimum=1)
# The longest any of the chat's statements waits for a row another transaction holds (PostgreSQL's
# lock_timeout): a session held that long is answered `session_busy`, and other sessions never wait.
CHAT_DB_LOCK_TIMEOUT = env_number("CHAT_DB_LOCK_TIMEOUT", 0.5, minimum=0.01)
# Resumable replies (docs/api.md §9): how long a reply's events stay after it ends, and the bounds
# of what is kept: events and characters per reply (Redis MAXLEN and memory), replies per process
# (memory backend only; Redis entries expire instead).
CHAT_RESUME_WINDOW = env_number("CHAT_RESUME_WINDOW", 300.0, minimum=1)
CHAT_RESUME_MAX_EVENTS = env_number("CHAT_RESUME_MAX_EVENTS", 5000, minimum=10, cast=int)
CHAT_RESUME_MAX_CHARS = env_number("CHAT_RESUME_MAX_CHARS", 100_000, minimum=1000, cast=int)
CHAT_RESUME_MAX_REPLIES = env_number("CHAT_RESUME_MAX_REPLIES", 100, minimum=1, cast=int)

# --- Django -----------------------------------------------------------------------------------

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "corsheaders",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "channels",
    "sessions_admin",
    "chat",
]

# Django's usual stack, each one Django's own middleware running on the event loop (see
# cozeproject/middleware.py): every request, API or page, passes the same checks without a thread.
MIDDLEWARE = [
    "cozeproject.middleware.RequestContextMiddleware",
    "cozeproject.middleware.JsonErrorsMiddleware",
    "cozeproject.middleware.TextInputMiddleware",
    "cozeproject.middleware.SecurityMiddleware",
    "cozeproject.middleware.StaticFilesMiddleware",
    "corsheaders.middleware.CorsMiddleware",
    "cozeproject.middleware.SessionMiddleware",
    "cozeproject.middleware.CommonMiddleware",
    "cozeproject.middleware.CsrfViewMiddleware",
    "cozeproject.middleware.AuthenticationMiddleware",
    "cozeproject.middleware.MessageMiddleware",
    "cozeproject.middleware.XFrameOptionsMiddleware",
]

# Django's flash messages (admin's "… was changed successfully") in a signed cookie, not the
# session: the middleware handles them on the event loop, without a database read (see above).
MESSAGE_STORAGE = "django.contrib.messages.storage.cookie.CookieStorage"

ROOT_URLCONF = "cozeproject.urls"
# JSON `forbidden` under the API's paths, Django's page elsewhere (chat/transports/errors.py).
CSRF_FAILURE_VIEW = "chat.transports.errors.csrf_failure_view"
LOGIN_REDIRECT_URL = "/"
LOGOUT_REDIRECT_URL = "/"

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

WSGI_APPLICATION = "cozeproject.wsgi.application"
ASGI_APPLICATION = "cozeproject.asgi.application"

DATABASES = {"default": env.db_url("DATABASE_URL", default=f"sqlite:///{BASE_DIR / 'db.sqlite3'}")}
DATABASES["default"]["ATOMIC_REQUESTS"] = False  # Django refuses it with async views.
DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # Several threads write the same file: take the write lock when a transaction begins
    # (IMMEDIATE), so concurrent transactions wait for it instead of failing with "database is
    # locked" when a reader tries to become a writer.
    DATABASES["default"].setdefault("OPTIONS", {}).update({"timeout": 20, "transaction_mode": "IMMEDIATE"})
    # A file, not shared-cache memory: the chat service's threads write concurrently, and shared
    # cache fails such writes at once instead of waiting.
    DATABASES["default"]["TEST"] = {
        "NAME": str(Path(tempfile.gettempdir()) / f"cozeproject-test-{os.getpid()}.sqlite3")
    }

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

REDIS_URL = env.str("REDIS_URL", default="")
if REDIS_URL:
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {
                "hosts": [
                    {
                        "address": REDIS_URL,
                        # channels-redis blocks 5 s in BZPOPMIN per receive; redis-py's default socket
                        # timeout is 5 s as well, so an idle receive timed out every few seconds.
                        "socket_timeout": 15,
                        "socket_connect_timeout": 5,
                        "socket_keepalive": True,
                    }
                ],
                "prefix": "cozeproject",
            },
        }
    }
else:
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"
STATICFILES_DIRS = [BASE_DIR / "static"]
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"
        if DEBUG
        else "whitenoise.storage.CompressedManifestStaticFilesStorage"
    },
}
# Serve static files straight from the apps in development and when collectstatic has not run.
WHITENOISE_USE_FINDERS = True

CORS_ALLOWED_ORIGINS = env_list("CORS_ALLOWED_ORIGINS")
CORS_ALLOW_CREDENTIALS = True
# Browser front-ends of the OpenAI-compatible API read and send the session header.
# Coze's JS SDK reads x-tt-logid, and sends x-coze-client-user-agent from a browser (docs/api.md §13).
CORS_EXPOSE_HEADERS = ["Retry-After", "X-Session-Id", "X-Tt-Logid"]
CORS_ALLOW_HEADERS = (*cors_default_headers, "x-session-id", "x-coze-client-user-agent")
CSRF_TRUSTED_ORIGINS = CORS_ALLOWED_ORIGINS

SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"
SESSION_COOKIE_HTTPONLY = True
if not DEBUG:
    SESSION_COOKIE_SECURE = env_bool("DJANGO_SECURE_COOKIES", True)
    CSRF_COOKIE_SECURE = SESSION_COOKIE_SECURE
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")

# The chat views read the body themselves and enforce their own 1 MiB limit with a JSON error.
# (Multipart file parts don't count against it; uploads have CHAT_MAX_UPLOAD_BYTES.)
DATA_UPLOAD_MAX_MEMORY_SIZE = CHAT_MAX_BODY_BYTES
# Uploaded files above this size are spooled to a temporary file rather than held in memory,
# and streamed from there to Coze (Django's default, stated here because uploads rely on it).
FILE_UPLOAD_MAX_MEMORY_SIZE = 2_621_440

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "chat.access.auth.ApiKeyAuthentication",
        "chat.access.browsers.BrowserSessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["chat.access.auth.IsChatOwner"],
    "DEFAULT_PARSER_CLASSES": ["chat.transports.serializers.JsonParser"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_THROTTLE_CLASSES": ["chat.access.rates.OwnerRateThrottle"],
    "DEFAULT_PAGINATION_CLASS": "rest_framework.pagination.PageNumberPagination",
    "PAGE_SIZE": 50,
    "EXCEPTION_HANDLER": "chat.transports.errors.api_exception_handler",
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "UNAUTHENTICATED_USER": None,
}

SPECTACULAR_SETTINGS = {
    "TITLE": "cozeproject API",
    "DESCRIPTION": "Chat with a Coze bot: whole replies, Server-Sent Events and WebSocket.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "chat.transports.openapi.add_views_outside_drf",
        "chat.transports.openapi_openai.add_openai_endpoints",
        "chat.transports.openapi_coze.add_coze_endpoints",
    ],
}

LOG_LEVEL = env.str("DJANGO_LOG_LEVEL", default="INFO")
LOG_FORMAT = env.str("DJANGO_LOG_FORMAT", default="plain")
if LOG_FORMAT not in ("plain", "json"):
    raise ImproperlyConfigured(f"DJANGO_LOG_FORMAT must be plain or json, got {LOG_FORMAT!r}")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {
        "context": {"()": "chat.runtime.logging.ContextFilter"},
        # Message text stays out of the log at any level (docs/api.md §15, chat/runtime/log_privacy.py):
        # these sit on the loggers, not a handler, so every handler gets the masked record.
        "sql_params": {"()": "chat.runtime.log_privacy.SqlParamsFilter"},
        "cozepy_bodies": {"()": "chat.runtime.log_privacy.CozepyBodyFilter"},
        "http_bodies": {"()": "chat.runtime.log_privacy.HttpBodyFilter"},
        "websocket_frames": {"()": "chat.runtime.log_privacy.WebSocketFrameFilter"},
    },
    "formatters": {
        "plain": {"format": "%(asctime)s %(levelname)s %(name)s [req=%(request_id)s coze=%(coze_logid)s] %(message)s"},
        "json": {"()": "chat.runtime.logging.JsonFormatter"},
    },
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": LOG_FORMAT, "filters": ["context"]}},
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    "loggers": {
        # httpx logs every request URL at INFO; keep it quiet.
        "httpx": {"level": "WARNING", "filters": ["http_bodies"]},
        "httpcore": {"level": "WARNING"},
        **{
            f"httpcore.{part}": {"filters": ["http_bodies"]}
            for part in ("connection", "http11", "http2", "proxy", "socks")
        },
        # cozepy warns about every failed call; the adapter maps and logs those itself. Its records
        # go through our handlers (with the request id), not the stderr handler cozepy adds.
        "cozepy": {"level": "ERROR", "propagate": True, "filters": ["cozepy_bodies"]},
        # SQL is logged at DEBUG (with DEBUG on); its parameters and literals are masked.
        "django.db.backends": {"filters": ["sql_params"]},
        "django.db.backends.schema": {"filters": ["sql_params"]},
        # websockets (uvicorn's WebSocket server) logs every handshake header at DEBUG, and
        # Authorization and Sec-WebSocket-Protocol carry keys and end-user tokens (docs/api.md §2).
        "websockets": {"level": "INFO"},
        # ... and if someone lowers it, frames and header values are masked (so in uvicorn's log,
        # whose WebSocket protocol logs frames to uvicorn.error).
        "websockets.server": {"filters": ["websocket_frames"]},
        "websockets.client": {"filters": ["websocket_frames"]},
        "uvicorn.error": {"filters": ["websocket_frames"]},
    },
}
