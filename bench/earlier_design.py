"""The earlier FastAPI service's streaming loop, reproduced in a few lines for comparison.

It iterated cozepy's *synchronous* client inside an async generator. Every `next()` blocks the
event loop on a socket read, so while one stream waits for its next token no other request runs:
concurrent streams take turns. Served by uvicorn (`bench.earlier_design:app`); environment
COZE_BASE_URL, COZE_API_TOKEN, COZE_BOT_ID. Same SSE frames as the gateway, so the same client
reads both.
"""

import json
import os

from cozepy import Coze, Message, TokenAuth

coze = Coze(auth=TokenAuth(os.environ["COZE_API_TOKEN"]), base_url=os.environ["COZE_BASE_URL"])
BOT_ID = os.environ["COZE_BOT_ID"]


def frame(event: str, data: dict) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n".encode()


async def events(message: str):
    # The whole point: a blocking iterator inside an async generator.
    answer = []
    for event in coze.chat.stream(
        bot_id=BOT_ID, user_id="bench", additional_messages=[Message.build_user_question_text(message)]
    ):
        if event.event == "conversation.message.delta" and event.message.content:
            answer.append(event.message.content)
            yield frame("delta", {"type": "delta", "content": event.message.content})
    yield frame("completed", {"type": "completed", "content": "".join(answer)})
    yield b"event: done\ndata: [DONE]\n\n"


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    request = json.loads(body)
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]})
    async for chunk in events(request["message"]):
        await send({"type": "http.response.body", "body": chunk, "more_body": True})
    await send({"type": "http.response.body", "body": b""})
