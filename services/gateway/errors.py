"""The one place that turns a failed call into an HTTP answer.

The body carries what the gRPC status said: `{"error": {"code", "status", "reason",
"message", "field_violations", "metadata"}}`, every field violation in the server's order.
The status follows Google's mapping of gRPC codes to HTTP (`google/rpc/code.proto`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

import grpc
import structlog
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from starlette.responses import JSONResponse

from darkroom_client.errors import DarkroomError, FieldViolation, InvalidArgument

log = structlog.get_logger("darkroom.gateway")

HTTP_STATUS: dict[grpc.StatusCode, int] = {
    grpc.StatusCode.OK: 200,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.UNKNOWN: 500,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.INTERNAL: 500,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DATA_LOSS: 500,
}


def error_body(
    code: grpc.StatusCode,
    message: str,
    *,
    reason: str = "",
    violations: Iterable[FieldViolation] = (),
    metadata: Mapping[str, str] | None = None,
) -> dict[str, object]:
    """The JSON error body for a gRPC status."""
    return {
        "error": {
            "code": code.name,
            "status": HTTP_STATUS.get(code, 500),
            "reason": reason or code.name,
            "message": message,
            "field_violations": [
                {"field": v.field, "description": v.description} for v in violations
            ],
            "metadata": dict(metadata or {}),
        }
    }


def error_response(
    code: grpc.StatusCode,
    message: str,
    *,
    reason: str = "",
    violations: Iterable[FieldViolation] = (),
    metadata: Mapping[str, str] | None = None,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    """An HTTP error answer with the JSON error body."""
    body = error_body(code, message, reason=reason, violations=violations, metadata=metadata)
    return JSONResponse(body, status_code=HTTP_STATUS.get(code, 500), headers=headers)


def retry_after(error: BaseException) -> int | None:
    """Whole seconds from the `RetryInfo` of the gRPC error behind `error`, if it has one."""
    cause = error.__cause__
    if not isinstance(cause, grpc.aio.AioRpcError):
        return None
    try:
        status = rpc_status.from_call(cause)
    except ValueError:  # the details disagree with the call's own code or message
        return None
    for detail in status.details if status is not None else ():
        if detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            info = error_details_pb2.RetryInfo()
            detail.Unpack(info)
            seconds: float = info.retry_delay.ToTimedelta().total_seconds()
            return max(0, math.ceil(seconds))
    return None


def from_darkroom_error(error: DarkroomError) -> JSONResponse:
    """The HTTP answer for a failed call of our client."""
    violations = error.violations if isinstance(error, InvalidArgument) else []
    headers = {}
    if error.code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        seconds = retry_after(error)
        if seconds is not None:
            headers["Retry-After"] = str(seconds)
    if error.code in {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN}:
        log.warning("upstream_failed", code=error.code.name, message=error.message)
    return error_response(
        error.code,
        error.message,
        reason=error.reason,
        violations=violations,
        metadata=error.metadata,
        headers=headers,
    )


def unauthenticated(
    message: str = "sign in, or send Authorization: Bearer <token>",
) -> JSONResponse:
    return error_response(grpc.StatusCode.UNAUTHENTICATED, message, reason="UNAUTHENTICATED")


def invalid(
    violations: Iterable[FieldViolation], message: str = "the request is invalid"
) -> JSONResponse:
    return error_response(
        grpc.StatusCode.INVALID_ARGUMENT, message, reason="INVALID_ARGUMENT", violations=violations
    )
