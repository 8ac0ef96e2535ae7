"""Signing a browser in and out: `/v1/session`."""

from __future__ import annotations

import json

import grpc
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from darkroom.services.gateway import calls
from darkroom.services.gateway.errors import error_response, from_darkroom_error, invalid
from darkroom.services.gateway.session import forbidden
from darkroom.services.gateway.state import gateway_of
from darkroom_client.errors import DarkroomError, FieldViolation

MAX_TOKEN_CHARS = 4096


async def sign_in(request: Request) -> Response:
    """POST /v1/session `{"token": ...}`: check the token with the Jobs service, then set
    the session cookie; the answer carries the CSRF token for later requests."""
    gateway = gateway_of(request)
    # JSON only: a cross-site HTML form cannot send it, so nobody signs a browser in to
    # their own account from another site (login CSRF).
    if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
        return error_response(
            grpc.StatusCode.INVALID_ARGUMENT,
            'send the token as JSON: {"token": "..."}',
            reason="JSON_REQUIRED",
        )
    if not gateway.sessions.origin_allowed(request):
        return forbidden("ORIGIN_MISMATCH", "the request's Origin is not this gateway")
    try:
        body = json.loads(await request.body())
    except (json.JSONDecodeError, UnicodeDecodeError):
        body = None
    token = body.get("token") if isinstance(body, dict) else None
    if not isinstance(token, str) or not token.strip() or len(token) > MAX_TOKEN_CHARS:
        return invalid([FieldViolation("token", "must be a non-empty string")])
    token = token.strip()
    with calls.caller(token):
        try:
            # Any read proves the token: the Jobs service answers UNAUTHENTICATED otherwise.
            await gateway.client.list(page_size=1)
        except DarkroomError as exc:
            return from_darkroom_error(exc)
    cookie, csrf = gateway.sessions.new(token)
    response = JSONResponse({"signed_in": True, "csrf_token": csrf})
    gateway.sessions.set_cookie(response, cookie)
    return response


async def session_info(request: Request) -> Response:
    """GET /v1/session: whether this browser is signed in, and its CSRF token."""
    sessions = gateway_of(request).sessions
    cookie = request.cookies.get("darkroom_session")
    caller = sessions.read(cookie) if cookie else None
    if caller is None:
        return JSONResponse({"signed_in": False}, headers={"Cache-Control": "no-store"})
    return JSONResponse(
        {"signed_in": True, "csrf_token": caller.csrf}, headers={"Cache-Control": "no-store"}
    )


async def sign_out(request: Request) -> Response:
    """DELETE /v1/session: forget the cookie (CSRF-checked like any change)."""
    sessions = gateway_of(request).sessions
    caller = sessions.identify(request)
    if caller is not None:
        refused = sessions.refuse_forgery(request, caller)
        if refused is not None:
            return refused
    response = JSONResponse({"signed_in": False})
    sessions.clear_cookie(response)
    return response
