"""OAuth: the JWT grant that issues access tokens (the JWT's signature is not checked)."""

from __future__ import annotations

import base64
import json
import os
import time
from typing import Any
from urllib.parse import parse_qsl

from .state import SimulatorBase
from .wire import CozeError, Request, Response, json_response

JWT_GRANT_TYPE = "urn:ietf:params:oauth:grant-type:jwt-bearer"


class OAuthRoutes(SimulatorBase):
    """``/api/permission/oauth2/token``: the JWT grant."""

    async def _oauth_token(self, request: Request) -> Response:
        content_type = request.headers.get("content-type", "")
        if "application/x-www-form-urlencoded" in content_type:
            form: dict[str, Any] = dict(parse_qsl(request.body.decode("utf-8", "replace")))
        else:
            try:
                form = request.json()
            except CozeError:
                return _oauth_error(400, "invalid_request", "the body must be JSON or a form")
        if form.get("grant_type") != JWT_GRANT_TYPE:
            return _oauth_error(400, "unsupported_grant_type", f"grant_type must be {JWT_GRANT_TYPE}")
        scheme, _, assertion = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not assertion.strip():
            return _oauth_error(401, "invalid_client", "a JWT is required as Bearer token")
        claims = _jwt_claims(assertion.strip())
        if claims is None:
            return _oauth_error(401, "invalid_client", "the JWT cannot be decoded")
        missing = [claim for claim in ("iss", "aud", "exp") if claim not in claims]
        if missing:
            return _oauth_error(401, "invalid_client", f"the JWT lacks {', '.join(missing)}")
        now = time.time()
        if not isinstance(claims["exp"], (int, float)) or claims["exp"] < now:
            return _oauth_error(401, "invalid_client", "the JWT has expired")
        duration = form.get("duration_seconds") or 900
        try:
            duration = int(duration)
        except (TypeError, ValueError):
            return _oauth_error(400, "invalid_request", "duration_seconds must be an integer")
        if duration <= 0:
            return _oauth_error(400, "invalid_request", "duration_seconds must be positive")
        token = "sim-jwt-" + os.urandom(16).hex()
        expires_in = int(now) + duration
        self.state.issued_tokens[token] = expires_in
        return json_response(
            200,
            {"access_token": token, "expires_in": expires_in, "token_type": "Bearer"},
        )


def _oauth_error(status: int, error_code: str, message: str) -> Response:
    # Coze's OAuth endpoints answer errors in this shape; cozepy raises CozeAPIError for it.
    return json_response(status, {"error_code": error_code, "error_message": message})


def _jwt_claims(token: str) -> dict[str, Any] | None:
    """The payload of a JWT, without checking its signature (None when undecodable)."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    payload = parts[1] + "=" * (-len(parts[1]) % 4)
    try:
        claims = json.loads(base64.urlsafe_b64decode(payload))
    except ValueError:
        return None
    return claims if isinstance(claims, dict) else None
