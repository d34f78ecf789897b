"""A page built on @coze/api's browser build (the UMD bundle of the pinned 1.3.9), served from
another origin allowed by CORS_ALLOWED_ORIGINS, streams turns from the gateway with an end-user
token its own backend mints — the page never holds the API key (docs/api.md §13)."""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from sessions_admin.models import ChatSession, Reply
from tests.browser.conftest import screenshot
from tests.browser.test_chat_page import db
from tests.chat.coze_clients import bot
from tests.chat.test_js_sdk_smoke import JS_DIR, node_or_skip
from tests.conftest import auth

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>A Coze page</title>
<script>window.global = window;</script>
<script src="/axios.min.js"></script>
<script src="/coze.js"></script>
</head><body><pre id="out"></pre>
<script>
// The page's own backend mints an end-user token (it holds the API key); the SDK asks for the
// token before every request.
let minted = null;
async function token() {
  if (!minted || minted.expires - Date.now() < 60000) {
    const answer = await (await fetch('/token')).json();
    minted = { ...answer, expires: Date.parse(answer.expires_at) };
  }
  return minted.token;
}
async function run(baseURL, botId) {
  const client = new CozeJs.CozeAPI({ baseURL, token });
  await token();
  const conversation = await client.conversations.create({});
  const turns = [];
  for (const text of ['Hello from a page', 'And again']) {
    const events = [];
    let answer = '';
    for await (const event of client.chat.stream({
      bot_id: botId,
      user_id: minted.user_id,  // the SDK would send a random one: a token speaks for its own user
      conversation_id: conversation.id,
      additional_messages: [{ role: 'user', content: text, content_type: 'text' }],
    })) {
      events.push(event.event);
      if (event.event === 'conversation.message.delta') answer += event.data.content;
    }
    turns.push({ events, answer });
  }
  document.getElementById('out').textContent = JSON.stringify(turns, null, 1);
  return { conversation_id: conversation.id, turns };
}
</script></body></html>
"""


class PageOrigin:
    """The page's own site: the page, the SDK's browser build, and a backend that mints tokens."""

    def __init__(self, gateway_url: str, api_key: str):
        files = {
            "/": (PAGE.encode(), "text/html"),
            "/axios.min.js": ((JS_DIR / "node_modules/axios/dist/axios.min.js").read_bytes(), "text/javascript"),
            "/coze.js": ((JS_DIR / "node_modules/@coze/api/dist/umd/index.js").read_bytes(), "text/javascript"),
        }
        self.minted = 0

        origin = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                if self.path == "/token":
                    origin.minted += 1
                    minted = httpx.post(
                        f"{gateway_url}/api/tokens", json={"user_id": "page-user"}, headers=auth(api_key)
                    )
                    body, content_type = minted.content, "application/json"
                elif self.path in files:
                    body, content_type = files[self.path]
                else:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def page_origin(asgi_server, api_key, settings):
    node_or_skip()  # the SDK's build comes from tests/js/node_modules
    origin = PageOrigin(asgi_server.url, api_key)
    settings.CORS_ALLOWED_ORIGINS = [origin.url]
    yield origin
    origin.close()


def test_a_page_on_another_origin_streams_with_the_sdks_browser_build_and_an_end_user_token(
    asgi_server, page_origin, browser_context, request
):
    page = browser_context.pages[0] if browser_context.pages else browser_context.new_page()
    errors = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(page_origin.url + "/")
    result = page.evaluate("([base, bot]) => run(base, bot)", [asgi_server.url, bot()])
    screenshot(page, request.node.name)
    assert not errors, errors
    first, second = result["turns"]
    assert first["answer"] == "You said: Hello from a page"
    assert second["answer"] == "You said: And again (turn 2; before that you said: Hello from a page)"
    for turn in result["turns"]:
        assert turn["events"][:2] == ["conversation.chat.created", "conversation.chat.in_progress"]
        assert turn["events"][-2:] == ["conversation.chat.completed", "done"]
    assert page_origin.minted == 1  # the page kept its token while it was fresh
    session = db(lambda: ChatSession.objects.get(session_id=result["conversation_id"]))
    assert session.coze_user_id == "page-user"
    assert db(lambda: list(Reply.objects.values_list("transport", flat=True))) == ["coze", "coze"]
    # Another origin is not allowed to read the gateway's answers.
    denied = httpx.options(
        f"{asgi_server.url}/v3/chat",
        headers={"Origin": "http://elsewhere.example", "Access-Control-Request-Method": "POST"},
    )
    assert "access-control-allow-origin" not in denied.headers
    assert json.loads(page.inner_text("#out"))[0]["answer"] == first["answer"]
