"""An over-budget client shows red in admin, as Chromium renders it: its budget line's text and its
bar on the client list, the client's page and the dashboard; a client within its budget does not."""

import shutil
from datetime import UTC, datetime

import pytest

from sessions_admin.models import ApiClient, DailyUsage
from tests.browser.conftest import CHROMIUM, screenshot
from tests.browser.test_site_pages import sign_in
from tests.sessions_admin.factories import make_client, make_user

if not CHROMIUM.exists():
    pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium)", allow_module_level=True)
pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")
if shutil.which(str(CHROMIUM)) is None:
    pytest.skip(f"{CHROMIUM} is not executable", allow_module_level=True)

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

RED = "rgb(186, 33, 33)"  # #ba2121, Django admin's own error red
# Each budget line on the page: its text colour, its bar's accent colour, and whether it says over.
LINES = """() => [...document.querySelectorAll('.budget-use')].map((line) => ({
    text: line.textContent,
    color: getComputedStyle(line).color,
    bar: getComputedStyle(line.querySelector('progress')).accentColor,
}))"""


@pytest.fixture
def clients(transactional_db) -> dict:
    """Written before `browser_context` starts Playwright, whose event loop makes Django refuse ORM calls."""
    make_user("root", superuser=True, password="root-password")
    today = datetime.now(UTC).date()
    over, under = make_client("over-app"), make_client("under-app")
    ApiClient.objects.filter(pk=over.pk).update(daily_token_budget=100)
    ApiClient.objects.filter(pk=under.pk).update(daily_token_budget=1000)
    for client, tokens in ((over, 150), (under, 10)):
        DailyUsage.objects.create(day=today, bot_id="b", owner_key=client.owner_key, replies=1, total_tokens=tokens)
    return {"over": over.pk}


def test_an_over_budget_client_is_red_and_the_others_are_not(asgi_server, clients, browser_context):
    page = browser_context.new_page()
    sign_in(page, asgi_server.url, "/admin/login/?next=/admin/", "root", "root-password")
    for path in (
        "/admin/sessions_admin/apiclient/",
        f"/admin/sessions_admin/apiclient/{clients['over']}/change/",
        "/admin/sessions_admin/reply/dashboard/",
    ):
        page.goto(asgi_server.url + path)
        lines = page.evaluate(LINES)
        over = [line for line in lines if "over budget" in line["text"]]
        within = [line for line in lines if "over budget" not in line["text"] and "of" in line["text"]]
        assert over, (path, lines)
        assert all(line["color"] == RED and line["bar"] == RED for line in over), (path, over)
        assert all(line["color"] != RED for line in within), (path, within)
        screenshot(page, "admin-over-budget-" + path.strip("/").replace("/", "-"))
