"""Who a request is from: a bearer token, or a browser's signed session cookie.

`EventSource` cannot send an `Authorization` header, so a browser signs in once with its
token and gets a session cookie (HttpOnly, SameSite=Strict, Secure on TLS) that carries
the token, signed with the gateway's secret so that any replica accepts it. A request
made with the cookie that changes something must also carry the session's CSRF token in
`X-CSRF-Token` (the page reads it from `GET /v1/session`, which other origins cannot), and
its `Origin`, when sent, must be the gateway's own. Bearer callers need neither.
"""

from __future__ import annotations

import hmac
import secrets
from dataclasses import dataclass
from datetime import timedelta
from urllib.parse import urlsplit

import grpc
from itsdangerous import BadSignature, URLSafeTimedSerializer
from starlette.requests import HTTPConnection
from starlette.responses import JSONResponse, Response

from darkroom.services.gateway.errors import error_response

COOKIE = "darkroom_session"
CSRF_HEADER = "x-csrf-token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


@dataclass(frozen=True)
class Caller:
    """The token a request acts with, and how it came."""

    token: str
    csrf: str = ""  # the session's CSRF token; empty for bearer callers

    @property
    def via_cookie(self) -> bool:
        return bool(self.csrf)


class Sessions:
    """Signs and reads session cookies; checks CSRF and origins."""

    def __init__(
        self,
        secret: str,
        ttl: timedelta,
        *,
        secure: bool,
        allowed_origins: frozenset[str] = frozenset(),
    ) -> None:
        self._serializer = URLSafeTimedSerializer(secret, salt="darkroom-gateway-session")
        self.ttl = ttl
        self.secure = secure
        self._allowed_origins = allowed_origins

    def new(self, token: str) -> tuple[str, str]:
        """A signed cookie value for `token`, and its CSRF token."""
        csrf = secrets.token_urlsafe(24)
        return self._serializer.dumps({"t": token, "c": csrf}), csrf

    def read(self, value: str) -> Caller | None:
        """The caller a cookie value stands for; None when forged, altered or expired."""
        try:
            data = self._serializer.loads(value, max_age=int(self.ttl.total_seconds()))
        except BadSignature:  # also raised for an expired one
            return None
        if not isinstance(data, dict):
            return None
        token, csrf = data.get("t"), data.get("c")
        if not isinstance(token, str) or not isinstance(csrf, str) or not token or not csrf:
            return None
        return Caller(token, csrf)

    def identify(self, connection: HTTPConnection) -> Caller | None:
        """The caller of a request: its bearer token, else its session cookie."""
        scheme, _, token = connection.headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return Caller(token.strip())
        cookie = connection.cookies.get(COOKIE)
        return self.read(cookie) if cookie else None

    def origin_allowed(self, connection: HTTPConnection) -> bool:
        """Whether the request's `Origin` (if any) is this gateway or an allowed origin."""
        origin = connection.headers.get("origin")
        if origin is None:
            return True  # not sent by browsers on same-origin GETs; cookies are Strict
        if origin in self._allowed_origins:
            return True
        return urlsplit(origin).netloc == connection.headers.get("host", "")

    def refuse_forgery(self, connection: HTTPConnection, caller: Caller) -> JSONResponse | None:
        """A 403 for a cookie request that changes something without proof it came from
        our page; None when it may go on."""
        method = connection.scope.get("method", "GET")
        if not caller.via_cookie or method in SAFE_METHODS:
            return None
        if not self.origin_allowed(connection):
            return forbidden("ORIGIN_MISMATCH", "the request's Origin is not this gateway")
        sent = connection.headers.get(CSRF_HEADER, "")
        if not sent or not hmac.compare_digest(sent, caller.csrf):
            return forbidden(
                "CSRF_TOKEN_MISSING", "a request made with the session cookie needs X-CSRF-Token"
            )
        return None

    def set_cookie(self, response: Response, value: str) -> None:
        response.set_cookie(
            COOKIE,
            value,
            max_age=int(self.ttl.total_seconds()),
            path="/",
            httponly=True,
            secure=self.secure,
            samesite="strict",
        )

    def clear_cookie(self, response: Response) -> None:
        response.delete_cookie(
            COOKIE, path="/", httponly=True, secure=self.secure, samesite="strict"
        )


def forbidden(reason: str, message: str) -> JSONResponse:
    return error_response(grpc.StatusCode.PERMISSION_DENIED, message, reason=reason)
