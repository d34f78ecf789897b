"""What-if entry point: the gateway with one cost taken away, to measure what that cost is.

Not a design, a measurement. `BENCH_WHATIF` is a comma list of:

- `nodb`: the turn's database steps (`chat.turn.store`: `session_route`, `turn_start`,
  `turn_upstream_started`, `turn_renew_lock`, `turn_finish`), the API-key lookup (async and
  sync) and the owner's spend (`chat.access.budgets.aspend_of`)
  become in-memory stand-ins, so a turn does no database work. Real gateway minus this =
  what the database work costs a turn.

    python -m bench.run --server daphne --sizes 1000 --whatif nodb --skip dbwork,earlier
"""

import itertools
import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "cozeproject.settings")

from django.conf import settings

from bench.bare import application as gateway
from chat.access import auth, budgets
from chat.domain.inputs import Owner
from chat.turn import records, store

WHATIF = set(filter(None, os.environ.get("BENCH_WHATIF", "").split(",")))
KNOWN = {"nodb"}
if WHATIF - KNOWN:
    raise SystemExit(f"BENCH_WHATIF: unknown {sorted(WHATIF - KNOWN)}; known: {sorted(KNOWN)}")
_ids = itertools.count(1)
BENCH_OWNER = Owner(key="api:bench", api_client_id=1)


async def _turn_start(start: records.TurnStart) -> records.TurnContext:
    pk = next(_ids)
    route = records.Route(
        coze_conversation_id="",
        bot_id=start.bot_id,
        coze_user_id=start.chat_request.user_id or settings.COZE_USER_ID,
    )
    return records.TurnContext(
        session_pk=pk,
        session_id=start.session_id,
        conversation_pk=pk,
        reply_pk=pk,
        lock_token=start.lock_token,
        route=route,
        owner_key=start.owner.key,
        transport=start.transport,
    )


async def _session_route(*, owner, session_id, bot_id, requested_user_id):
    return records.Route(
        coze_conversation_id="", bot_id=bot_id, coze_user_id=requested_user_id or settings.COZE_USER_ID
    )


async def _nothing(**kwargs):
    return None


async def _aowner_from_api_key(key):
    return BENCH_OWNER


if "nodb" in WHATIF:
    store.turn_start = _turn_start
    store.session_route = _session_route
    store.turn_upstream_started = _nothing
    store.turn_finish = _nothing
    store.turn_renew_lock = _nothing
    auth.aowner_from_api_key = _aowner_from_api_key
    auth.owner_from_api_key_cached = lambda key: BENCH_OWNER
    # Per-client budgets read the owner's spend (admission looks it up on the module).

    async def _no_spend(owner_key, at):
        return budgets.Spend()

    budgets.aspend_of = _no_spend

application = gateway
