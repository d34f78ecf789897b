"""End-user tokens (docs/api.md §2, "End-user tokens"): short-lived credentials an API client
mints for one of its end users, so that a page or a device never holds the client's key.

A token is `czt_` followed by a value signed with Django's signing (`TimestampSigner`: HMAC-SHA256
keyed by `SECRET_KEY`, with this module's salt, so no other signed value of the project can pass
for a token). What it carries, readable but not alterable:

* `c`: the API client's id — the token acts as that client (its limits, budgets and bots);
* `u`: the end user's Coze `user_id` — the token reaches only that user's sessions and files;
* `x`: when it expires (Unix seconds; at most a day after it was minted);
* `k`: a tag of the client's key (an HMAC of the key's stored hash under `SECRET_KEY`, not the
  key or its hash), checked on every use with the client still active: deactivating the client
  (or giving it another key) revokes its tokens.

Reading a token costs no I/O; the client check is cached by `chat.access.auth` as keys are.
Tokens are not stored anywhere, and never logged: only their `czt_` prefix tells them apart.
"""

import math
import time
from dataclasses import dataclass

from django.core import signing
from django.utils.crypto import constant_time_compare, salted_hmac

from chat.domain.errors import ChatError

TOKEN_PREFIX = "czt_"
SIGNING_SALT = "cozeproject.access.tokens"
KEY_TAG_SALT = "cozeproject.access.tokens.key"
# `.` separates the signed parts (Django's default `:` is not allowed in a WebSocket subprotocol),
# so a token is made of `A-Za-z0-9_-.` only: safe in a header, a URL and `Sec-WebSocket-Protocol`.
SEPARATOR = "."
MIN_EXPIRES_IN = 1
MAX_EXPIRES_IN = 86_400
DEFAULT_EXPIRES_IN = 900
# Longer than any token: a value past this is refused however its payload reads.
SIGNATURE_MAX_AGE = MAX_EXPIRES_IN + 60


def now() -> float:
    """The clock tokens expire by (tests move it)."""
    return time.time()


def looks_like_token(raw: str) -> bool:
    """Whether a Bearer value is meant as an end-user token rather than an API key (no I/O)."""
    return raw.startswith(TOKEN_PREFIX)


def key_tag(key_hash: str) -> str:
    """What a token carries of its client's key: reveals nothing of it, changes with it."""
    return salted_hmac(KEY_TAG_SALT, key_hash, algorithm="sha256").hexdigest()[:16]


def _signer() -> signing.TimestampSigner:
    return signing.TimestampSigner(salt=SIGNING_SALT, sep=SEPARATOR)


@dataclass(frozen=True, slots=True)
class Claims:
    client_id: int
    user_id: str
    expires_at: int
    key_tag: str

    def matches(self, tag: str) -> bool:
        return constant_time_compare(self.key_tag, tag)


def mint(*, client_id: int, key_hash: str, user_id: str, expires_in: int) -> tuple[str, int]:
    """A token for `user_id` of the client, and when it expires (Unix seconds, rounded up: a token
    lives at least `expires_in` seconds)."""
    expires_at = math.ceil(now() + expires_in)
    payload = {"c": client_id, "u": user_id, "x": expires_at, "k": key_tag(key_hash)}
    return TOKEN_PREFIX + _signer().sign_object(payload), expires_at


class TokenRefused(ChatError):
    """A token that is not one (`forged`: malformed or its signature fails) or no longer is one."""

    def __init__(self, detail: str, *, forged: bool):
        super().__init__("unauthenticated", detail)
        self.forged = forged


def read(raw: str) -> Claims:
    """The claims of a token whose signature holds and which has not expired (no I/O).

    Raises TokenRefused: `forged` for anything that is not a token we signed.
    """
    try:
        payload = _signer().unsign_object(raw.removeprefix(TOKEN_PREFIX), max_age=SIGNATURE_MAX_AGE)
        claims = Claims(client_id=payload["c"], user_id=payload["u"], expires_at=payload["x"], key_tag=payload["k"])
    except signing.SignatureExpired:
        raise TokenRefused("The token has expired; get a new one.", forged=False) from None
    except (signing.BadSignature, ValueError, TypeError, KeyError):
        raise TokenRefused("Invalid token.", forged=True) from None
    if now() >= claims.expires_at:
        raise TokenRefused("The token has expired; get a new one.", forged=False)
    return claims
