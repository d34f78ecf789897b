"""The one place that says whether a turn may start: per-client limits and token budgets (docs/api.md §11).

Before Coze is called, `aadmit_turn` checks, in this order:

1. the bot: a client with its own bot list may only use those (`403 bot_not_allowed`);
2. the token budgets: a client whose use today (UTC) or this month has reached its daily or
   monthly budget gets `429 quota_exceeded`, `Retry-After` = seconds until that budget resets;
3. requests per minute, then concurrent streams (`429 rate_limited`);
4. replies in flight against what is left of a budget: each reply in flight is assumed to cost the
   client's average reply this month (`CHAT_BUDGET_RESERVE_TOKENS` before its first). A new turn
   is refused (`429 rate_limited`, retry shortly) when those reservations already cover what is
   left. So concurrent first turns overshoot a budget by at most what the replies already in
   flight spend beyond their reservations; a running reply is never cut.

Steps 3 and 4 run as one atomic step (a Lua script in Redis with REDIS_URL, a lock in-process
otherwise), so workers racing for the last slot or the last tokens can't both win. Spend is read
from the daily usage rollup (`DailyUsage`), which `turn_finish` updates in the same transaction
that stores a reply: a reply's tokens count from the moment it is stored, in every worker. A
turn gives back its slot only once its reply is stored (`chat.turn.finish.arelease_when_stored`),
and each release is counted: the spend is read after that count, and the atomic step refuses
(SPEND_CHANGED) when a slot was released since, so the spend is read again — no admission sees a
slot free while the spend it read misses that slot's reply (up to SPEND_READS reads; the last
goes ahead unchecked).
DailyUsage days are UTC days because TIME_ZONE is UTC; budgets follow them (a reply counts on
the day it started).

A client's limits come from its ApiClient row, cached per process for LIMITS_CACHE_SECONDS, so
an admin edit takes effect within seconds without a restart. Limits left empty use the
server-wide defaults; users and browsers always do, and have no budgets.

If Redis can't be reached the limiter lets requests through and logs a warning: an outage of the
limiter should not become an outage of the chat. Budgets still hold (they read the database).
"""

import asyncio
import logging
import uuid
from dataclasses import dataclass

from django.conf import settings

from chat.access import alerts, budgets, client_limits, counters
from chat.domain.errors import ChatError

logger = logging.getLogger(__name__)

# How many times an admission reads the spend when replies keep ending while it reads (see above).
SPEND_READS = 3


@dataclass(slots=True, eq=False)
class Admission:
    """A turn let in: it holds an in-flight slot (when a stream limit or a budget needs one),
    renewed in the background for as long as the turn runs. Give it back with `arelease_turn`."""

    owner_key: str
    api_client_id: int | None
    limits: client_limits.Limits
    slot_id: str = ""
    renewal: asyncio.Task | None = None
    released: bool = False


async def _keep_renewing(owner_key: str, slot_id: str) -> None:
    # A reply longer than the lease keeps its slot: renewed three times per lease.
    while True:
        await asyncio.sleep(counters.lease_seconds() / 3)
        await counters.arenew_slot(owner_key, slot_id)


def _check_bot(limits: client_limits.Limits, bot_id: str) -> None:
    if limits.allowed_bot_ids and bot_id not in limits.allowed_bot_ids:
        raise ChatError("bot_not_allowed", f"bot_id {bot_id!r} is not allowed for this API client.")


async def acheck_bot(*, owner, bot_id: str) -> None:
    """Whether `owner` may use `bot_id` at all (the server's bots, then the client's own list):
    ChatError `bot_not_allowed` (403) if not. What `aadmit_turn` checks first, for requests that
    name a bot without starting a turn (a Coze client creating or listing conversations)."""
    if bot_id not in settings.COZE_ALLOWED_BOT_IDS:
        raise ChatError("bot_not_allowed", f"bot_id {bot_id!r} is not allowed on this server.")
    _check_bot(await client_limits.alimits_for(owner), bot_id)


async def aadmit_turn(*, owner, bot_id: str) -> Admission:
    """Let a turn of `owner` with `bot_id` start, or raise ChatError: `bot_not_allowed` (403),
    `quota_exceeded` (429, Retry-After until the budget resets) or `rate_limited` (429).

    Call once per turn, before anything is stored or sent to Coze; always `arelease_turn` the
    result, however the turn ends.
    """
    limits = await client_limits.alimits_for(owner)
    _check_bot(limits, bot_id)
    slot_id = uuid.uuid4().hex if (limits.max_streams or limits.has_budget) else ""
    for attempt in range(SPEND_READS):
        left, reserve, releases = -1, 0, ""
        if limits.has_budget:
            # The release count first, then the spend: a slot released after this read makes the
            # atomic step answer SPEND_CHANGED, since the spend read may miss that reply's tokens.
            # The last attempt goes ahead unchecked, so a client ending many replies a second
            # can't starve its own admissions.
            releases = await counters.areleases(owner.key) if attempt < SPEND_READS - 1 else ""
            at = budgets.now()
            spend = await budgets.aspend_of(owner.key, at)
            left = budgets.check_budgets(limits, spend, at)
            reserve = budgets.reservation_per_reply(spend)
        result, ttl, held = await counters.aadmit(
            owner.key,
            rpm=limits.rpm,
            slot_id=slot_id,
            max_streams=limits.max_streams,
            reserve=reserve,
            left=left,
            releases=releases,
        )
        if result != counters.SPEND_CHANGED:
            break
    if result == counters.OVER_RATE:
        raise ChatError(
            "rate_limited",
            f"More than {limits.rpm} requests a minute; retry in {max(1, ttl)} s.",
            retry_after=max(1, ttl),
        )
    if result == counters.OVER_STREAMS:
        raise ChatError(
            "rate_limited", f"At most {limits.max_streams} replies may stream at once for one client.", retry_after=1
        )
    if result == counters.OVER_BUDGET_IN_FLIGHT:
        raise ChatError(
            "rate_limited",
            "The replies in flight may use the rest of this client's token budget; retry when one has ended.",
            retry_after=1,
        )
    admission = Admission(owner_key=owner.key, api_client_id=owner.api_client_id, limits=limits)
    if held:
        admission.slot_id = slot_id
        admission.renewal = asyncio.create_task(_keep_renewing(owner.key, slot_id))
    return admission


async def arelease_turn(admission: Admission) -> None:
    """The turn has ended (and its reply is stored): free its slot and check budget alerts."""
    if admission.released:
        return
    admission.released = True
    if admission.renewal is not None:
        admission.renewal.cancel()
    if admission.slot_id:
        await counters.arelease_slot(admission.owner_key, admission.slot_id)
    if admission.limits.has_budget and admission.api_client_id is not None:
        alerts.check_in_background(
            api_client_id=admission.api_client_id, owner_key=admission.owner_key, limits=admission.limits
        )
