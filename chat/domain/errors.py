"""One error type for the whole chat path.

`ChatError` carries a machine code from docs/api.md §3, the HTTP status that goes with it, a human
detail that never contains secrets, whether retrying may help, and an optional Retry-After.
The DRF exception handler, the SSE `error` frame and the WebSocket `error` frame are all built
from it (`chat.transports.errors`), so every transport answers the same failure the same way.
Pure: no Django.
"""

from chat.domain.events import ErrorEvent

# code -> (HTTP status, default detail, retryable by default)
ERROR_CODES: dict[str, tuple[int, str, bool]] = {
    "invalid": (400, "The request is invalid.", False),
    "unauthenticated": (401, "Authentication is required: send 'Authorization: Bearer <api key>'.", False),
    "forbidden": (403, "You are not allowed to do this.", False),
    "bot_not_allowed": (403, "This bot_id is not allowed.", False),
    "not_found": (404, "Not found.", False),
    "method_not_allowed": (405, "Method not allowed.", False),
    "session_busy": (409, "This session already has a reply in progress; wait for it or cancel it.", True),
    "cancelled": (409, "The reply was cancelled.", False),
    # A reply paused for the client's local tools whose outputs did not come (docs/api.md §13).
    "tool_output_timeout": (408, "The local tools' outputs did not arrive in time.", False),
    "payload_too_large": (413, "The request body is too large.", False),
    "unsupported_media_type": (415, "The request body must be application/json.", False),
    "rate_limited": (429, "Too many requests; slow down.", True),
    "quota_exceeded": (429, "This client's token budget is used up until it resets.", False),
    "upstream_rate_limited": (429, "Coze is rate limiting this server; retry later.", True),
    "internal_error": (500, "Internal server error.", True),
    "upstream_auth_failed": (502, "Coze rejected this server's credentials; the server needs reconfiguring.", False),
    "upstream_error": (502, "Coze answered with an error.", True),
    "upstream_unavailable": (503, "Coze could not be reached.", True),
    "service_unavailable": (503, "The service is temporarily unavailable; retry shortly.", True),
    "interrupted": (503, "The server is shutting down; retry the message.", True),
    "upstream_timeout": (504, "Coze went silent for too long.", True),
    # A resume names an event of a reply whose events and stored answer are no longer kept (§9).
    "gone": (410, "That reply is no longer kept; start again from the session's messages.", False),
}


class ChatError(Exception):
    """A failure with a defined answer for the client.

    `code` is one of ERROR_CODES; `status`, `detail` and `retryable` default from it.
    `upstream_code` and `logid` are kept for storage and logs, never shown as internals (Coze's
    API shows Coze's code and message, as Coze would have).
    """

    def __init__(
        self,
        code: str,
        detail: str | None = None,
        *,
        retryable: bool | None = None,
        retry_after: int | None = None,
        errors: dict | None = None,
        upstream_code: int | None = None,
        upstream_msg: str = "",
        chat_failed: bool = False,
        logid: str | None = None,
        logged: bool = False,
    ):
        status, default_detail, default_retryable = ERROR_CODES[code]
        self.code = code
        self.status = status
        self.detail = detail or default_detail
        self.retryable = default_retryable if retryable is None else retryable
        self.retry_after = retry_after
        self.errors = errors
        self.upstream_code = upstream_code
        # Coze's own message (redacted) and whether Coze failed the chat (`conversation.chat.failed`):
        # Coze's API relays them as Coze sent them.
        self.upstream_msg = upstream_msg
        self.chat_failed = chat_failed
        self.logid = logid
        # Already logged, or logged in aggregate (a flood's refusals): Django's request log skips it.
        self.logged = logged
        super().__init__(f"{code}: {self.detail}")

    def as_body(self) -> dict:
        body = {"detail": self.detail, "code": self.code}
        if self.errors:
            body["errors"] = self.errors
        return body

    def as_event(self) -> dict:
        """The `error` object of SSE and WebSocket streams."""
        return ErrorEvent.from_error(self).as_dict()

    def headers(self) -> dict[str, str]:
        headers = {"Retry-After": str(self.retry_after)} if self.retry_after is not None else {}
        if self.code == "unauthenticated":
            headers["WWW-Authenticate"] = 'Bearer realm="api"'
        return headers


def csrf_detail(reason: str) -> str:
    """The `forbidden` detail for a CSRF rejection, from the reason Django gives in words."""
    return (
        f"CSRF check failed: {reason} A browser session needs the X-CSRFToken header (the csrftoken "
        "cookie's value); API clients send 'Authorization: Bearer <api key>' and no cookies."
    )
