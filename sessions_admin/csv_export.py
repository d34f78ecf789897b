"""CSV export of token usage, streamed: a million rows never sit in memory.

Rows are read in keyset pages (`id < last id`, newest first), so each query is short, uses the
primary key, holds no cursor or transaction open between pages and stays fast however deep into
the table the export is. Under ASGI the response iterates asynchronously, one page per
database call; under WSGI (and Django's test client) it iterates synchronously. (Django would
otherwise buffer a sync iterator whole under ASGI, and an async one whole under WSGI.)
"""

import csv
from collections.abc import AsyncIterator, Iterator

from asgiref.sync import sync_to_async
from django.core.handlers.asgi import ASGIRequest
from django.http import StreamingHttpResponse
from django.utils import timezone

from sessions_admin.dashboard import token_cost

PAGE_SIZE = 2000
COLUMNS = [
    ("reply_id", "pk"),
    ("started_at", "started_at"),
    ("finished_at", "finished_at"),
    ("status", "status"),
    ("error_code", "error_code"),
    ("transport", "transport"),
    ("bot_id", "bot_id"),
    ("owner_key", "owner_key"),
    ("api_client", "api_client__name"),
    ("user", "user__username"),
    ("session_id", "session__session_id"),
    ("coze_conversation_id", "conversation__coze_conversation_id"),
    ("coze_chat_id", "coze_chat_id"),
    ("input_tokens", "input_tokens"),
    ("output_tokens", "output_tokens"),
    ("total_tokens", "total_tokens"),
    ("time_to_first_token_ms", "time_to_first_token_ms"),
    ("duration_ms", "duration_ms"),
]
HEADER = [name for name, _ in COLUMNS] + ["estimated_cost"]
INPUT_TOKENS = [name for name, _ in COLUMNS].index("input_tokens")
OUTPUT_TOKENS = [name for name, _ in COLUMNS].index("output_tokens")
# Spreadsheets run cells starting with these as formulas: a client named "=HYPERLINK(…)" must stay text.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


class _Line:
    """A file-like target for csv.writer that hands back what it was given."""

    def write(self, value: str) -> str:
        return value


_writer = csv.writer(_Line())


def csv_cell(value) -> str | int:
    if value is None:
        return ""
    if isinstance(value, int):
        return value
    if hasattr(value, "isoformat"):
        return value.isoformat()
    text = str(value)
    return "'" + text if text.startswith(FORMULA_STARTS) else text


def csv_line(row: tuple) -> str:
    cost = token_cost(row[INPUT_TOKENS], row[OUTPUT_TOKENS])
    return _writer.writerow([csv_cell(value) for value in row] + ["" if cost is None else str(cost)])


def fetch_page(queryset, before_pk: int | None) -> list[tuple]:
    """The next page of rows with a primary key below `before_pk` (from the top when None)."""
    page = queryset.order_by("-pk")
    if before_pk is not None:
        page = page.filter(pk__lt=before_pk)
    return list(page.values_list(*[lookup for _, lookup in COLUMNS])[:PAGE_SIZE])


def iter_csv(queryset) -> Iterator[str]:
    yield _writer.writerow(HEADER)
    before = None
    while True:
        rows = fetch_page(queryset, before)
        if not rows:
            return
        yield "".join(csv_line(row) for row in rows)
        before = rows[-1][0]


async def aiter_csv(queryset) -> AsyncIterator[str]:
    yield _writer.writerow(HEADER)
    before = None
    while True:
        rows = await sync_to_async(fetch_page)(queryset, before)
        if not rows:
            return
        yield "".join(csv_line(row) for row in rows)
        before = rows[-1][0]


def usage_csv_response(request, queryset) -> StreamingHttpResponse:
    """The replies of `queryset` (the changelist's, with its filters) as a streamed CSV download."""
    queryset = queryset.select_related(None)
    content = aiter_csv(queryset) if isinstance(request, ASGIRequest) else iter_csv(queryset)
    response = StreamingHttpResponse(content, content_type="text/csv; charset=utf-8")
    filename = f"token-usage-{timezone.now():%Y%m%d-%H%M%S}.csv"
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    response["Cache-Control"] = "no-store"
    return response
