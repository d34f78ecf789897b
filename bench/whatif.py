"""What-if entry points: the gateway with one cost taken away, to measure what that cost is.

Not designs, measurements. `BENCH_WHATIF` is a comma list of:

- `nodb`: the chat service's database steps (`turn_start`, `turn_upstream_started`,
  `turn_finish`, `turn_renew_lock`) and the API-key lookup become in-memory stand-ins, so a
  turn does no database work. Real gateway minus this = what the database work costs.
- `lean`: `POST /api/chat/stream` calls the same view function, but straight from ASGI: no
  Django request handler, middleware, signals or per-request thread (ThreadSensitiveContext).
  Real gateway minus this = what Django's request machinery costs a stream.

    python -m bench.run --server daphne --sizes 1000 --whatif nodb,lean --skip dbwork,earlier
"""

import io
import itertools
import os

import django
from django.core.handlers.asgi import ASGIRequest

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "cozeproject.settings")
django.setup()

from chat import auth, services, views  # noqa: E402  (after django.setup())
from cozeproject.asgi import application as gateway  # noqa: E402

WHATIF = set(filter(None, os.environ.get("BENCH_WHATIF", "").split(",")))
_ids = itertools.count(1)


async def _turn_start(*, owner, chat_request, transport, worker_channel=""):
    pk = next(_ids)
    return services.TurnContext(
        session_pk=pk,
        session_id=chat_request.session_id or f"s{pk}",
        conversation_pk=pk,
        coze_conversation_id="",
        reply_pk=pk,
        lock_token="x",
        coze_user_id=chat_request.user_id or "bench",
        bot_id=chat_request.bot_id or os.environ.get("COZE_BOT_ID", ""),
        owner_key=owner.key,
        transport=transport,
    )


async def _nothing(**kwargs):
    return None


async def _owner_from_api_key(key):
    return services.Owner(key="api:bench", api_client_id=1)


if "nodb" in WHATIF:
    services.turn_start = _turn_start
    services.turn_upstream_started = _nothing
    services.turn_finish = _nothing
    services.turn_renew_lock = _nothing
    auth.aowner_from_api_key = _owner_from_api_key


async def _lean_stream(scope, receive, send):
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    response = await views.chat_stream_view(ASGIRequest(scope, io.BytesIO(body)))
    headers = [(k.encode("latin1"), v.encode("latin1")) for k, v in response.items()]
    await send({"type": "http.response.start", "status": response.status_code, "headers": headers})
    if response.streaming:
        async for part in response:
            await send({"type": "http.response.body", "body": part, "more_body": True})
        await send({"type": "http.response.body"})
    else:
        await send({"type": "http.response.body", "body": response.content})


async def application(scope, receive, send):
    if "lean" in WHATIF and scope["type"] == "http" and scope["path"] == "/api/chat/stream":
        return await _lean_stream(scope, receive, send)
    return await gateway(scope, receive, send)
