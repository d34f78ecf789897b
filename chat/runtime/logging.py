"""Log context for a request and a chat turn: every line carries the request id and, once Coze
has answered, Coze's log id (`x-tt-logid`, what Coze support asks for).

The values live in contextvars: set once per request (middleware) or WebSocket frame (consumer)
and per turn (the chat service), and inherited by the tasks a turn starts.
"""

import contextvars
import json
import logging
import re
import uuid

from chat.runtime import metrics

request_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")
coze_logid_var: contextvars.ContextVar[str] = contextvars.ContextVar("coze_logid", default="-")

_CLIENT_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{8,128}$")


def new_request_id(incoming: str | None = None) -> str:
    """Keep a client's well-formed X-Request-ID (to follow it across services), else make one."""
    if incoming and _CLIENT_REQUEST_ID.match(incoming):
        return incoming
    return uuid.uuid4().hex


def request_context_begin(request) -> contextvars.Token:
    """Give a request its id (kept from X-Request-ID when well-formed); reset the returned token
    when the view returns."""
    request.request_id = new_request_id(request.headers.get("X-Request-ID"))
    return request_id_var.set(request.request_id)


def request_context_end(request, response, *, route: str):
    """Return the request id to the client and count the request by route, method and status."""
    response["X-Request-ID"] = request.request_id
    metrics.HTTP_REQUESTS.labels(route, request.method, str(response.status_code)).inc()
    return response


class ContextFilter(logging.Filter):
    """Adds `request_id` and `coze_logid` to every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id_var.get()
        record.coze_logid = coze_logid_var.get()
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object a line, for log shippers."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": getattr(record, "request_id", "-"),
            "coze_logid": getattr(record, "coze_logid", "-"),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)
