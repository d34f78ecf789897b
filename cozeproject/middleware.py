"""ASGI middleware that runs before Django reads a request body."""

import json

from django.conf import settings

PAYLOAD_TOO_LARGE = json.dumps(
    {"detail": "The request body is larger than 1 MiB.", "code": "payload_too_large"}
).encode()


class BodySizeLimitMiddleware:
    """Refuse bodies over CHAT_MAX_BODY_BYTES with a JSON 413 without reading them whole.

    Django's ASGI handler spools the entire body before any view runs, so the limit has to be
    enforced here: by Content-Length up front, and by counting for chunked uploads.
    """

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit = settings.CHAT_MAX_BODY_BYTES
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = 0
                if declared > limit:
                    return await self._refuse(send)
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                # Disconnected before the body arrived: let Django see it as it would.
                chunks.append(message)
                break
            size += len(message.get("body", b""))
            if size > limit:
                return await self._refuse(send)
            chunks.append(message)
            if not message.get("more_body", False):
                break

        async def replay():
            if chunks:
                return chunks.pop(0)
            return await receive()

        return await self.app(scope, replay, send)

    @staticmethod
    async def _refuse(send) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(PAYLOAD_TOO_LARGE)).encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": PAYLOAD_TOO_LARGE})
