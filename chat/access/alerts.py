"""Budget alerts (docs/api.md §11): when an API client's use crosses a threshold of a budget, POST
`{"client","period","used","limit","threshold"}` to CHAT_BUDGET_ALERT_WEBHOOK.

* Once per client, period (that day or month) and threshold: each crossing is a `BudgetAlert`
  row, and the row's unique constraint decides which worker sends it when several notice it.
* Never in a chat's way: checks and deliveries run as background tasks after a reply has ended,
  each POST has a timeout, and every failure is logged and retried, never raised.
* Retried with exponential backoff (RETRY_BASE_SECONDS, doubled per attempt, MAX_ATTEMPTS in
  all). A sender claims the row by moving `next_attempt_at` past its own timeout, so a second
  worker picking up the same pending alert (the next check of that client retries alerts whose
  sender died) waits instead of posting twice.
"""

import asyncio
import logging
from datetime import timedelta
from urllib.parse import urlsplit

import httpx
from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import F
from django.utils import timezone

from chat.access import budgets, client_limits
from chat.runtime.db import db_async
from sessions_admin.models import BudgetAlert

logger = logging.getLogger(__name__)

MAX_ATTEMPTS = 6
RETRY_BASE_SECONDS = 2.0
POST_TIMEOUT_SECONDS = 10.0

_background: set[asyncio.Task] = set()


def _spawn(coro) -> asyncio.Task:
    task = asyncio.get_running_loop().create_task(coro)
    _background.add(task)
    task.add_done_callback(_background.discard)
    return task


def check_in_background(*, api_client_id: int, owner_key: str, limits: "client_limits.Limits") -> None:
    """After a reply of a budgeted client ended: record the alerts its use now calls for (in the
    database, for admin, webhook or not) and send them when a webhook is set."""
    _spawn(_check_and_send(api_client_id=api_client_id, owner_key=owner_key, budget_limits=limits))


def masked_webhook(url: str) -> str:
    """The webhook URL as logs and admin show it: scheme and host only. Webhook URLs carry their
    token in the path or query (Slack, Feishu, DingTalk, …), so those are never shown."""
    parts = urlsplit(url)
    host = f"{parts.hostname or ''}{f':{parts.port}' if parts.port else ''}"
    hidden = parts.path not in ("", "/") or parts.query or parts.username
    return f"{parts.scheme}://{host}/…" if hidden else f"{parts.scheme}://{host}"


def mask_webhook_in(text: str, url: str | None = None) -> str:
    """`text` (an error message) with the webhook URL, as configured or as httpx spells it, and
    its path and query replaced by `masked_webhook`'s form."""
    url = settings.CHAT_BUDGET_ALERT_WEBHOOK if url is None else url
    if not url:
        return text
    parts = urlsplit(url)
    for spelling in sorted({url, str(httpx.URL(url))}, key=len, reverse=True):
        text = text.replace(spelling, masked_webhook(url))
    for secret in (parts.query, parts.path if len(parts.path) > 1 else "", parts.password or ""):
        if secret:
            text = text.replace(secret, "…")
    return text


def _failure(exc: Exception) -> str:
    if isinstance(exc, httpx.HTTPStatusError):  # its message repeats the URL
        return f"HTTP {exc.response.status_code} {exc.response.reason_phrase}"
    return mask_webhook_in(f"{type(exc).__name__}: {exc}")


def crossed_thresholds(use: "budgets.BudgetUse", thresholds: list[int]) -> list[int]:
    return [threshold for threshold in thresholds if use.used * 100 >= use.limit * threshold]


def record_alerts(*, api_client_id: int, owner_key: str, budget_limits: "client_limits.Limits") -> list[int]:
    """Insert an alert row for each threshold now crossed and not yet alerted; returns the ids of
    the alerts this call should send: the ones it inserted, and earlier ones still undelivered
    whose retry is due."""
    at = budgets.now()
    spend = budgets.spend_of(owner_key, at)
    created = []
    for use in budgets.budget_uses(budget_limits, spend, at):
        start = at.date() if use.period == "day" else at.date().replace(day=1)
        for threshold in crossed_thresholds(use, settings.CHAT_BUDGET_ALERT_THRESHOLDS):
            try:
                with transaction.atomic():
                    alert = BudgetAlert.objects.create(
                        api_client_id=api_client_id,
                        period=use.period,
                        period_start=start,
                        threshold=threshold,
                        used=use.used,
                        limit=use.limit,
                    )
            except IntegrityError:
                continue  # alerted already (perhaps by another worker this very moment)
            created.append(alert.pk)
    # Also alerts whose sender died (after inserting, or between retries); claiming decides who sends.
    pending = BudgetAlert.objects.filter(
        api_client_id=api_client_id,
        delivered_at__isnull=True,
        attempts__lt=MAX_ATTEMPTS,
        next_attempt_at__lte=timezone.now(),
    ).values_list("pk", flat=True)
    return created + [pk for pk in pending if pk not in created]


def _claim(alert_pk: int) -> dict | None:
    """Take the alert for one delivery attempt; None if delivered or claimed by someone else."""
    now = timezone.now()
    claimed = BudgetAlert.objects.filter(pk=alert_pk, delivered_at__isnull=True, next_attempt_at__lte=now).update(
        next_attempt_at=now + timedelta(seconds=POST_TIMEOUT_SECONDS + 5)
    )
    if not claimed:
        return None
    alert = BudgetAlert.objects.select_related("api_client").get(pk=alert_pk)
    return {
        "client": alert.api_client.name,
        "period": alert.period,
        "used": alert.used,
        "limit": alert.limit,
        "threshold": alert.threshold,
        "attempts": alert.attempts,
    }


def _delivered(alert_pk: int) -> None:
    BudgetAlert.objects.filter(pk=alert_pk).update(
        delivered_at=timezone.now(), attempts=F("attempts") + 1, last_error=""
    )


def _failed(alert_pk: int, error: str, retry_in: float) -> None:
    BudgetAlert.objects.filter(pk=alert_pk).update(
        attempts=F("attempts") + 1,
        last_error=error[:300],
        next_attempt_at=timezone.now() + timedelta(seconds=retry_in),
    )


_arecord_alerts = db_async(record_alerts)
_aclaim = db_async(_claim)
_adelivered = db_async(_delivered)
_afailed = db_async(_failed)


async def _check_and_send(*, api_client_id: int, owner_key: str, budget_limits: "client_limits.Limits") -> None:
    try:
        alert_pks = await _arecord_alerts(api_client_id=api_client_id, owner_key=owner_key, budget_limits=budget_limits)
    except Exception:
        logger.warning("Budget alerts: could not check client %s", api_client_id, exc_info=True)
        return
    if not settings.CHAT_BUDGET_ALERT_WEBHOOK:
        return  # recorded; admin shows them
    for alert_pk in alert_pks:
        _spawn(adeliver(alert_pk))


async def adeliver(alert_pk: int) -> bool:
    """POST one alert, retrying with backoff; returns whether it was delivered (by this call)."""
    while True:
        try:
            payload = await _aclaim(alert_pk)
        except Exception:
            logger.warning("Budget alerts: could not claim alert %s", alert_pk, exc_info=True)
            return False
        if payload is None:
            return False
        attempt = payload.pop("attempts") + 1
        try:
            async with httpx.AsyncClient(timeout=POST_TIMEOUT_SECONDS) as client:
                response = await client.post(settings.CHAT_BUDGET_ALERT_WEBHOOK, json=payload)
                response.raise_for_status()
        except Exception as exc:  # noqa: BLE001 - any failure is retried, none may reach a chat
            retry_in = RETRY_BASE_SECONDS * 2 ** (attempt - 1)
            error = _failure(exc)
            logger.warning("Budget alert %s: attempt %d failed (%s)", alert_pk, attempt, error)
            try:
                await _afailed(alert_pk, error, retry_in)
            except Exception:
                logger.warning("Budget alerts: could not record a failed attempt", exc_info=True)
                return False
            if attempt >= MAX_ATTEMPTS:
                logger.error("Budget alert %s: giving up after %d attempts", alert_pk, attempt)
                return False
            await asyncio.sleep(retry_in)
            continue
        await _adelivered(alert_pk)
        logger.info("Budget alert sent: %s", payload)
        return True
