"""How every API handler starts: who is calling, may they, and errors as HTTP answers."""

from __future__ import annotations

import functools
import time
from collections.abc import Awaitable, Callable

import grpc
import structlog
from google.protobuf import json_format
from google.protobuf.message import Message
from starlette.requests import Request
from starlette.responses import Response

from darkroom.services.gateway import calls
from darkroom.services.gateway.errors import error_response, from_darkroom_error, unauthenticated
from darkroom.services.gateway.session import Caller
from darkroom.services.gateway.state import gateway_of
from darkroom_client.errors import DarkroomError

log = structlog.get_logger("darkroom.gateway")

Handler = Callable[[Request, Caller], Awaitable[Response]]


def as_json(message: Message) -> dict[str, object]:
    """A message as the gateway's JSON: proto field names, enums by name, so that the paths
    of field violations (`spec.num_images`) are the paths of the JSON itself."""
    result: dict[str, object] = json_format.MessageToDict(message, preserving_proto_field_name=True)
    return result


def authenticated(handler: Handler) -> Callable[[Request], Awaitable[Response]]:
    """Run `handler` as the request's caller: 401 without one, 403 for a forged cookie
    request, the mapped status for a failed call, 500 (logged) for anything else."""

    @functools.wraps(handler)
    async def endpoint(request: Request) -> Response:
        sessions = gateway_of(request).sessions
        caller = sessions.identify(request)
        if caller is None:
            return unauthenticated()
        refused = sessions.refuse_forgery(request, caller)
        if refused is not None:
            return refused
        # Streaming responses go on in this task after the handler returns: they keep it.
        calls.set_caller(caller.token)
        started = time.perf_counter()
        try:
            response = await handler(request, caller)
        except DarkroomError as exc:
            response = from_darkroom_error(exc)
        except Exception:
            # The boundary: logged here with its traceback, never sent.
            log.exception("gateway_request_failed", path=request.url.path)
            response = error_response(grpc.StatusCode.INTERNAL, "internal error", reason="INTERNAL")
        job = {"job_id": request.path_params["job_id"]} if "job_id" in request.path_params else {}
        log.info(
            "http",
            method=request.method,
            path=request.url.path,
            status=response.status_code,
            duration_ms=round((time.perf_counter() - started) * 1000, 3),
            **job,
        )
        return response

    return endpoint
