"""Logging filters that keep message text out of every log record, at any level (docs/api.md §15).

Three libraries would write a turn's text into the log at DEBUG: Django's `django.db.backends`
(each statement with its parameters, and on PostgreSQL the statement as sent, with the values
inlined as literals), cozepy (each request's JSON body, each response's data and each streamed
event) and, potentially, httpx / httpcore (request and response objects). settings.LOGGING
attaches these filters to those loggers themselves, not to a handler, so that every handler
(the console, a log shipper, a test's capture) gets the masked record. They only run when the
logger is enabled for the record's level: at the default levels they cost nothing.

The project's own loggers never log message text; tests/test_log_privacy.py checks all of it.
"""

import logging
import re

MASK = "[masked]"

# A SQL string literal: '…' with '' inside, optionally E'…' (with backslash escapes) or
# U&'…'; what psycopg inlines for a str, a JSON document or an array's items.
_SQL_LITERAL = re.compile(r"(?:\b[EeUu]&?)?'(?:[^'\\]|''|\\.)*'", re.DOTALL)
# `name=%s` in a format string, for each placeholder in order (cozepy: "json=%s", "data=%s").
_PLACEHOLDER = re.compile(r"(?:(\w+)=)?%[-#0 +]*\d*(?:\.\d+)?[sdrfiax]")
# cozepy's named arguments that only describe a request (everything else it logs is masked).
_COZEPY_KEPT = frozenset({"logid", "stream", "async", "type", "code", "status"})
# An unnamed argument that is a method, a URL or a path (with no query string), or a log id.
_REQUEST_NAME = re.compile(r"^(?:[A-Z]{3,7}|https?://[^\s?#]{1,300}|/[^\s?#]{0,300}|\[[\w/.-]{0,200}\])$")


def masked_sql(sql) -> str:
    """A statement with every string literal replaced by '…' (numbers, ids and names stay)."""
    if not isinstance(sql, str):
        return sql
    return _SQL_LITERAL.sub("'…'", sql)


def _masked_params(params) -> str:
    if isinstance(params, str):  # masked already (Django configures logging again on a second setup)
        return params
    try:
        count = len(params)
    except TypeError:
        return MASK
    return f"[{count} masked]"


class SqlParamsFilter(logging.Filter):
    """`django.db.backends`: the statement with its literals masked, its parameters replaced by
    their count. Django logs `(duration) sql; args=params; alias=alias` with `sql` and `params`
    as extras too; both forms are masked."""

    def filter(self, record: logging.LogRecord) -> bool:
        if hasattr(record, "sql"):
            record.sql = masked_sql(record.sql)
        if hasattr(record, "params"):
            record.params = _masked_params(record.params)
        args = record.args
        if isinstance(args, tuple) and len(args) == 4 and record.msg == "(%.3f) %s; args=%s; alias=%s":
            duration, sql, params, alias = args
            record.args = (duration, masked_sql(sql), _masked_params(params), alias)
        elif isinstance(args, tuple) and args:
            # Any other statement log (schema editor, transactions): literals masked in every string.
            record.args = tuple(masked_sql(arg) if isinstance(arg, str) else arg for arg in args)
        return True


def _harmless(name: str | None, arg) -> bool:
    """Whether a cozepy argument names a request rather than carrying content: an allowed name
    (logid, stream, type, …), or an unnamed method, URL or path; numbers, booleans and None."""
    if arg is None or isinstance(arg, (bool, int, float)):
        return True
    if name is not None:
        return name in _COZEPY_KEPT and isinstance(arg, str) and len(arg) <= 200
    return isinstance(arg, str) and bool(_REQUEST_NAME.match(arg))


def _mask_cozepy_arguments(record: logging.LogRecord) -> None:
    """Mask every argument but the ones that only name the request (`_harmless`)."""
    if not isinstance(record.args, tuple) or not isinstance(record.msg, str):
        if record.args:
            record.args = MASK if not isinstance(record.args, tuple) else tuple(MASK for _ in record.args)
        return
    placeholders = [match.group(1) for match in _PLACEHOLDER.finditer(record.msg.replace("%%", ""))]
    if len(placeholders) != len(record.args):
        # A message we don't know the shape of: keep nothing of its arguments.
        record.args = tuple(MASK for _ in record.args)
        return
    record.args = tuple(
        arg if _harmless(name, arg) else MASK for name, arg in zip(placeholders, record.args, strict=True)
    )


class CozepyBodyFilter(logging.Filter):
    """`cozepy`: the bodies it logs at DEBUG (`request … sending, params=…, json=…`, `responding,
    logid=…, data=…`, `receive event, logid=…, event=…`) masked; method, URL and logid stay.
    Whatever is not known to be harmless is masked, so a new cozepy message can't leak text."""

    def filter(self, record: logging.LogRecord) -> bool:
        _mask_cozepy_arguments(record)
        return True


class HttpBodyFilter(logging.Filter):
    """`httpx` / `httpcore`: their DEBUG records name requests and responses (method, URL,
    status, connection events), not bodies; any argument that is a body (bytes, a dict or a
    list, a request or response object, whose repr could grow) is masked all the same, so an
    upgrade that starts logging them cannot leak text."""

    BODY_TYPES = (bytes, bytearray, memoryview, dict, list)

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and args:
            record.args = tuple(MASK if isinstance(arg, self.BODY_TYPES) else arg for arg in args)
        elif isinstance(args, dict) and args:
            record.args = {key: MASK if isinstance(value, self.BODY_TYPES) else value for key, value in args.items()}
        return True


class WebSocketFrameFilter(logging.Filter):
    """`websockets.*` and `uvicorn.error` (uvicorn hands its WebSocket protocol that logger): at
    DEBUG they log every frame (`< TEXT '{"message": …}'`) and every handshake header (`> %s: %s`,
    Authorization included). Frames are masked, and headers keep their name only."""

    HEADER_LINES = frozenset({"< %s: %s", "> %s: %s"})

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if not isinstance(args, tuple) or not args:
            return True
        if record.msg in self.HEADER_LINES and len(args) == 2:
            record.args = (args[0], MASK)
        else:
            record.args = tuple(MASK if type(arg).__name__ == "Frame" else arg for arg in args)
        return True
