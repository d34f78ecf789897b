"""A client's limits (docs/api.md §11): its own settings on its ApiClient row, else the server-wide
defaults; users and browsers always use the defaults and have no budgets.

Rows are cached per process for LIMITS_CACHE_SECONDS, so an admin edit takes effect within
seconds without a restart.
"""

import time
from dataclasses import dataclass

from django.conf import settings

from chat.runtime.db import db_async
from sessions_admin.models import ApiClient

LIMITS_CACHE_SECONDS = 5.0


@dataclass(frozen=True, slots=True)
class Limits:
    """The limits in force for one owner; 0 rpm or streams = unlimited, None budget = none."""

    rpm: int
    max_streams: int
    daily_tokens: int | None = None
    monthly_tokens: int | None = None
    allowed_bot_ids: tuple[str, ...] = ()
    client_name: str = ""

    @property
    def has_budget(self) -> bool:
        return self.daily_tokens is not None or self.monthly_tokens is not None


@dataclass(frozen=True, slots=True)
class _ClientRow:
    """An ApiClient's own settings (None = use the server default), as cached."""

    name: str
    rpm: int | None
    max_streams: int | None
    daily_tokens: int | None
    monthly_tokens: int | None
    allowed_bot_ids: tuple[str, ...]


def _defaults() -> Limits:
    return Limits(rpm=settings.CHAT_RATE_LIMIT_PER_MINUTE, max_streams=settings.CHAT_MAX_CONCURRENT_STREAMS)


def _resolve(row: _ClientRow | None) -> Limits:
    # Defaults are read at each use, so a changed setting needs no cache flush.
    if row is None:
        return _defaults()
    return Limits(
        rpm=settings.CHAT_RATE_LIMIT_PER_MINUTE if row.rpm is None else row.rpm,
        max_streams=settings.CHAT_MAX_CONCURRENT_STREAMS if row.max_streams is None else row.max_streams,
        daily_tokens=row.daily_tokens,
        monthly_tokens=row.monthly_tokens,
        allowed_bot_ids=row.allowed_bot_ids,
        client_name=row.name,
    )


_client_rows: dict[int, tuple[float, _ClientRow | None]] = {}


def _load_client_row(api_client_id: int) -> _ClientRow | None:
    client = (
        ApiClient.objects.filter(pk=api_client_id)
        .only(
            "name",
            "rate_limit_per_minute",
            "max_concurrent_streams",
            "daily_token_budget",
            "monthly_token_budget",
            "allowed_bot_ids",
        )
        .first()
    )
    if client is None:
        return None
    return _ClientRow(
        name=client.name,
        rpm=client.rate_limit_per_minute,
        max_streams=client.max_concurrent_streams,
        daily_tokens=client.daily_token_budget,
        monthly_tokens=client.monthly_token_budget,
        allowed_bot_ids=tuple(client.allowed_bots),
    )


def _cached_row(api_client_id: int) -> tuple[bool, _ClientRow | None]:
    cached = _client_rows.get(api_client_id)
    if cached is not None and cached[0] > time.monotonic():
        return True, cached[1]
    return False, None


def _remember_row(api_client_id: int, row: _ClientRow | None) -> None:
    if len(_client_rows) > 10_000:
        _client_rows.clear()
    _client_rows[api_client_id] = (time.monotonic() + LIMITS_CACHE_SECONDS, row)


def limits_for(owner) -> Limits:
    """The limits of `owner` (an API client's own, else the defaults); cached LIMITS_CACHE_SECONDS."""
    if owner.api_client_id is None:
        return _defaults()
    found, row = _cached_row(owner.api_client_id)
    if not found:
        row = _load_client_row(owner.api_client_id)
        _remember_row(owner.api_client_id, row)
    return _resolve(row)


_aload_client_row = db_async(_load_client_row)


async def alimits_for(owner) -> Limits:
    """`limits_for` for async code."""
    if owner.api_client_id is None:
        return _defaults()
    found, row = _cached_row(owner.api_client_id)
    if not found:
        row = await _aload_client_row(owner.api_client_id)
        _remember_row(owner.api_client_id, row)
    return _resolve(row)
