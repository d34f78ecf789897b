"""Who is asking (docs/api.md §2): an API client with a Bearer key (or an end-user token it minted,
chat.access.tokens: the client narrowed to one end user), a logged-in user, or — when
CHAT_ALLOW_ANONYMOUS is on — an anonymous browser identified by its session (those two in
chat.access.browsers).

The same rules serve DRF views (authentication classes), the async SSE views (`aresolve_owner`)
and the WebSocket consumer. Session-based callers get CSRF checks on unsafe methods; key-based
callers don't need them. A caller that sends neither a key nor a session cookie is not a browser
session, so it gets `401 unauthenticated` (with WWW-Authenticate), never a CSRF `403`: the CSRF
answer is for a browser that has a session cookie and no valid token.
"""

import asyncio
import threading
import time
from datetime import timedelta

from django.conf import settings
from django.utils import timezone
from rest_framework import authentication, exceptions, permissions

from chat.access import auth_failures, browsers, tokens
from chat.domain.errors import ChatError
from chat.domain.inputs import Owner
from chat.runtime import metrics
from chat.runtime.db import db_async
from sessions_admin.models import ApiClient, hash_api_key, looks_like_api_key

LAST_USED_PRECISION = timedelta(minutes=1)


def bearer_key(authorization: str) -> str | None:
    """The key of an `Authorization: Bearer <key>` header; None when the header is absent."""
    if not authorization:
        return None
    scheme, _, key = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        raise ChatError("unauthenticated", "Use 'Authorization: Bearer <api key>'.")
    return key.strip()


def _invalid_key() -> ChatError:
    return ChatError("unauthenticated", "Invalid or deactivated API key.")


def owner_from_api_key(raw_key: str) -> Owner:
    """The owner for an API key; ChatError("unauthenticated") if unknown or deactivated."""
    if not looks_like_api_key(raw_key):
        raise _invalid_key()
    client = ApiClient.objects.filter(key_hash=hash_api_key(raw_key), is_active=True).only("pk", "last_used_at").first()
    if client is None:
        raise _invalid_key()
    _note_use(client.pk, client.last_used_at)
    return Owner(key=client.owner_key, api_client_id=client.pk)


def _note_use(client_pk: int, last_used_at) -> None:
    """Record the client's use at minute precision: one write per client per minute, not per request."""
    now = timezone.now()
    if last_used_at is None or now - last_used_at > LAST_USED_PRECISION:
        ApiClient.objects.filter(pk=client_pk).update(last_used_at=now)


# Recently seen keys, so a burst of streams doesn't queue one database lookup each on the pool.
# The price: deactivating a key takes up to this long to reach every worker.
KEY_CACHE_SECONDS = 10.0
KEY_CACHE_MAX = 10_000
_owners_by_key_hash: dict[str, tuple[float, Owner]] = {}


def _cached_owner(key_hash: str) -> Owner | None:
    cached = _owners_by_key_hash.get(key_hash)
    return cached[1] if cached is not None and cached[0] > time.monotonic() else None


def _remember_owner(key_hash: str, owner: Owner) -> None:
    if len(_owners_by_key_hash) >= KEY_CACHE_MAX:
        _owners_by_key_hash.clear()
    _owners_by_key_hash[key_hash] = (time.monotonic() + KEY_CACHE_SECONDS, owner)


# --- end-user tokens ---------------------------------------------------------------------------
#
# A token (chat.access.tokens, recognised by its prefix) is read without I/O: a forged one is a
# wrong credential like a wrong key (counted against its address, refused without reading from a
# blocked one), an expired one is simply refused. Then its client must still be active with the
# key the token was minted under; that check is remembered per client and key for
# KEY_CACHE_SECONDS, as valid keys are, so revoking a key reaches its tokens within that time too.
_token_clients: dict[tuple[int, str], tuple[float, bool]] = {}


def _token_client_valid(claims: tokens.Claims) -> bool:
    row = ApiClient.objects.filter(pk=claims.client_id, is_active=True).values_list("key_hash", "last_used_at").first()
    if row is None or not claims.matches(tokens.key_tag(row[0])):
        return False
    _note_use(claims.client_id, row[1])
    return True


_atoken_client_valid = db_async(_token_client_valid, pool="auth")


def _cached_token_client(claims: tokens.Claims) -> bool | None:
    cached = _token_clients.get((claims.client_id, claims.key_tag))
    return cached[1] if cached is not None and cached[0] > time.monotonic() else None


def _remember_token_client(claims: tokens.Claims, valid: bool) -> None:
    if len(_token_clients) >= KEY_CACHE_MAX:
        _token_clients.clear()
    _token_clients[(claims.client_id, claims.key_tag)] = (time.monotonic() + KEY_CACHE_SECONDS, valid)


def _token_owner(claims: tokens.Claims, valid: bool) -> Owner:
    if not valid:
        raise ChatError("unauthenticated", "The token's API key has been revoked.")
    return Owner(
        key=ApiClient(pk=claims.client_id).owner_key, api_client_id=claims.client_id, end_user_id=claims.user_id
    )


def _owner_from_token(raw_token: str, address: str | None) -> Owner:
    """`_aowner_from_token` for sync views (DRF)."""
    try:
        claims = tokens.read(raw_token)
    except tokens.TokenRefused as refused:
        if refused.forged:
            blocked = auth_failures.auth_block_seconds(address)
            if blocked:
                raise _refused_from_address(blocked) from None
            metrics.AUTH_FAILURES.labels("unauthenticated").inc()
            auth_failures.record_auth_failure(address)
        raise
    valid = _cached_token_client(claims)
    if valid is None:
        valid = _token_client_valid(claims)
        _remember_token_client(claims, valid)
    return _token_owner(claims, valid)


async def _aowner_from_token(raw_token: str, address: str | None) -> Owner:
    """The owner an end-user token acts as: its client narrowed to its end user.

    Raises ChatError("unauthenticated") for a forged, expired or revoked token (a forged one
    counted against `address`), and ChatError("rate_limited") for a forged one from a blocked address.
    """
    try:
        claims = tokens.read(raw_token)
    except tokens.TokenRefused as refused:
        if refused.forged:
            blocked = auth_failures.auth_block_seconds(address)
            if blocked:
                await _ahold_refusal(address, blocked)
                raise _refused_from_address(blocked) from None
            metrics.AUTH_FAILURES.labels("unauthenticated").inc()
            await auth_failures.arecord_auth_failure(address)
        raise
    valid = _cached_token_client(claims)
    if valid is None:
        valid = await _atoken_client_valid(claims)
        _remember_token_client(claims, valid)
    return _token_owner(claims, valid)


# --- wrong keys from a blocked address ---------------------------------------------------------
#
# An address that sent too many wrong keys (chat.access.auth_failures, CHAT_AUTH_FAILURES_PER_MINUTE) gets its keys
# that are not ours refused without a lookup, while its valid keys keep working. "Not ours" is told
# by the directory: the first 64 bits of every active key's hash, loaded in one query only while
# some address is blocked and reloaded at most every KEY_DIRECTORY_SECONDS (so a key created
# meanwhile works from a blocked address within that time). A key in it is looked up as usual.
KEY_DIRECTORY_SECONDS = 10.0
_directory: tuple[float, frozenset[int]] | None = None
_directory_lock = threading.Lock()
_directory_loading = False  # an async reload is under way: others use the stale directory meanwhile


def _fingerprint(key_hash: str) -> int:
    return int(key_hash[:16], 16)


def _load_key_directory() -> frozenset[int]:
    global _directory
    with _directory_lock:
        if _directory is not None and _directory[0] > time.monotonic():
            return _directory[1]  # loaded by another caller while this one waited
        key_hashes = ApiClient.objects.filter(is_active=True).values_list("key_hash", flat=True)
        fingerprints = frozenset(_fingerprint(key_hash) for key_hash in key_hashes.iterator())
        _directory = (time.monotonic() + KEY_DIRECTORY_SECONDS, fingerprints)
        return fingerprints


_aload_key_directory = db_async(_load_key_directory, pool="auth")


async def _ais_known_key(key_hash: str) -> bool:
    global _directory_loading
    directory = _directory
    if directory is not None and (directory[0] > time.monotonic() or _directory_loading):
        return _fingerprint(key_hash) in directory[1]
    _directory_loading = True
    try:
        return _fingerprint(key_hash) in await _aload_key_directory()
    finally:
        _directory_loading = False


# A blocked address's refusals are paced, as nginx's limit_req paces excess requests: each waits
# for its turn at CHAT_AUTH_BLOCKED_RATE a second (per worker), at most until the block ends. A
# client that sends its next wrong key as soon as it has an answer then gets that many answers a
# second however many connections it opens, and the event loop stays free for valid turns.
# At most AUTH_REFUSALS_HELD wait at once in a worker (about 30-40 KiB each); beyond that they are
# answered at once, so the waiting can't cost memory without bound.
AUTH_REFUSALS_HELD = 1024
_refusals_held = 0
_next_refusal: dict[str, float] = {}  # address -> monotonic time of its next paced refusal


def refusal_wait(address: str, *, rate: float, block_seconds: float, now: float) -> float:
    """Book the next refusal of `address` at `rate` a second and return how long it waits for it:
    1/rate after the address's last booked refusal (or `now`), but never past the block's end."""
    if len(_next_refusal) > 10_000:
        for stale in [a for a, turn in _next_refusal.items() if turn <= now]:
            del _next_refusal[stale]
    turn = min(max(now, _next_refusal.get(address, 0.0)) + 1 / rate, now + block_seconds)
    _next_refusal[address] = turn
    return turn - now


async def _ahold_refusal(address: str, block_seconds: int) -> None:
    """Wait for this refusal's turn (see above); a client that hangs up cancels the wait."""
    global _refusals_held
    rate = settings.CHAT_AUTH_BLOCKED_RATE
    if rate <= 0 or _refusals_held >= AUTH_REFUSALS_HELD:
        return
    wait = refusal_wait(address, rate=rate, block_seconds=block_seconds, now=time.monotonic())
    _refusals_held += 1
    try:
        await asyncio.sleep(wait)
    finally:
        _refusals_held -= 1


def _owner_unless_blocked(raw_key: str, address: str | None) -> Owner | int:
    """`owner_from_api_key` under the failed-authentication limit of `address`: for a key that is
    not ours from a blocked address, the seconds left of the block instead of a lookup; a wrong key
    is counted against the address here.

    Sync, for DRF's views, and run on the auth threads by `aowner_from_api_key`: a burst of wrong
    keys queues its lookups there before the first failures are back on the event loop, so they
    are counted, and the block checked, in the thread.
    """
    blocked = auth_failures.auth_block_seconds(address)
    if blocked and (
        not looks_like_api_key(raw_key) or _fingerprint(hash_api_key(raw_key)) not in _load_key_directory()
    ):
        return blocked
    try:
        return owner_from_api_key(raw_key)
    except ChatError as error:
        if _failed(error):
            auth_failures.record_auth_failure(address)
        raise


_aowner_unless_blocked = db_async(_owner_unless_blocked, pool="auth")


def _refused_from_address(seconds: int) -> ChatError:
    metrics.AUTH_FAILURES.labels("blocked").inc()
    return ChatError(
        "rate_limited",
        f"Too many failed authentications from this address; retry in {seconds} s.",
        retry_after=seconds,
        logged=True,  # logged once when the address was blocked, and counted
    )


def _failed(error: ChatError) -> bool:
    if error.code != "unauthenticated":
        return False  # the database failed, not the key
    metrics.AUTH_FAILURES.labels("unauthenticated").inc()
    return True


def owner_from_api_key_cached(raw_key: str, *, address: str | None = None) -> Owner:
    """`aowner_from_api_key` for sync views (DRF)."""
    if tokens.looks_like_token(raw_key):
        return _owner_from_token(raw_key, address)
    key_hash = hash_api_key(raw_key) if looks_like_api_key(raw_key) else None
    owner = _cached_owner(key_hash) if key_hash else None
    if owner is not None:
        return owner
    owner = _owner_unless_blocked(raw_key, address)
    if isinstance(owner, int):
        raise _refused_from_address(owner)
    _remember_owner(key_hash, owner)
    return owner


async def aowner_from_api_key(raw_key: str, *, address: str | None = None) -> Owner:
    """The owner of a Bearer credential: an API key, remembering valid keys for KEY_CACHE_SECONDS,
    or an end-user token (`czt_…`), which acts as its client narrowed to its end user.

    Raises ChatError("unauthenticated") for a wrong or deactivated key, counting it against
    `address` (the client's IP address; None: not limited); and ChatError("rate_limited") without
    any lookup for a key that is not ours from an address over CHAT_AUTH_FAILURES_PER_MINUTE.
    Tokens: see `_aowner_from_token`.
    """
    if tokens.looks_like_token(raw_key):
        return await _aowner_from_token(raw_key, address)
    key_hash = hash_api_key(raw_key) if looks_like_api_key(raw_key) else None
    owner = _cached_owner(key_hash) if key_hash else None
    if owner is not None:
        return owner
    blocked = auth_failures.auth_block_seconds(address)
    if blocked and (key_hash is None or not await _ais_known_key(key_hash)):
        await _ahold_refusal(address, blocked)
        raise _refused_from_address(blocked)
    if key_hash is None:  # no database lookup for what can't be a key
        metrics.AUTH_FAILURES.labels("unauthenticated").inc()
        await auth_failures.arecord_auth_failure(address)
        raise _invalid_key()
    owner = await _aowner_unless_blocked(raw_key, address)
    if isinstance(owner, int):
        await _ahold_refusal(address, owner)
        raise _refused_from_address(owner)
    _remember_owner(key_hash, owner)
    return owner


async def aresolve_owner(request) -> Owner:
    """For async Django views: a Bearer key or token, else a browser (chat.access.browsers).
    Raises ChatError("unauthenticated"/"forbidden")."""
    key = bearer_key(request.headers.get("Authorization", ""))
    if key is not None:
        return await aowner_from_api_key(key, address=request.META.get("REMOTE_ADDR"))
    owner = await browsers.abrowser_owner(request)
    if owner is None:
        raise ChatError("unauthenticated")
    return owner


# --- DRF --------------------------------------------------------------------------------------


class ApiKeyAuthentication(authentication.BaseAuthentication):
    """`Authorization: Bearer <key>`; `request.auth` becomes the Owner."""

    keyword = "Bearer"

    def authenticate(self, request):
        try:
            key = bearer_key(request.headers.get("Authorization", ""))
            if key is None:
                return None
            return (None, owner_from_api_key_cached(key, address=request.META.get("REMOTE_ADDR")))
        except ChatError as error:
            if error.code != "unauthenticated":
                raise  # 429 from the failed-authentication limit: the API's exception handler renders it
            raise exceptions.AuthenticationFailed(error.detail) from None

    def authenticate_header(self, request) -> str:
        return 'Bearer realm="api"'


class IsChatOwner(permissions.BasePermission):
    """Any authenticated owner; what they may see is scoped by the services."""

    def has_permission(self, request, view) -> bool:
        if isinstance(request.auth, Owner):
            return True
        raise exceptions.NotAuthenticated()
