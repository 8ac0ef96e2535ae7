"""Darkroom's error tree, and the one place that maps errors to gRPC statuses.

Domain code raises a `DarkroomError` subclass. `translate` turns low-level failures
(database, Redis, timeouts) into ours; `to_status` turns ours into a `google.rpc.Status`
with an `ErrorInfo` (stable reason) and, for bad input, a `BadRequest` listing every field.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta

import grpc
import psycopg
import redis.exceptions
import sqlalchemy.exc
from google.protobuf import any_pb2, duration_pb2
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2

DOMAIN = "darkroom"


@dataclass(frozen=True)
class FieldViolation:
    """One invalid field: its path in the request (`spec.width`) and what is wrong."""

    field: str
    description: str


class DarkroomError(Exception):
    """Base of every error Darkroom reports to a caller."""

    code = grpc.StatusCode.UNKNOWN
    reason = "UNKNOWN"

    def __init__(self, message: str, *, metadata: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.metadata = dict(metadata or {})


class InvalidArgumentError(DarkroomError):
    """The request is malformed; `violations` lists every bad field."""

    code = grpc.StatusCode.INVALID_ARGUMENT
    reason = "INVALID_ARGUMENT"

    def __init__(self, message: str, violations: Sequence[FieldViolation] = ()) -> None:
        super().__init__(message)
        self.violations = list(violations)


class NotFoundError(DarkroomError):
    """The resource does not exist, or belongs to someone else (which is not revealed)."""

    code = grpc.StatusCode.NOT_FOUND
    reason = "JOB_NOT_FOUND"


class AlreadyExistsError(DarkroomError):
    """An idempotency key was reused with a different request."""

    code = grpc.StatusCode.ALREADY_EXISTS
    reason = "REQUEST_ID_REUSED"


class FailedPreconditionError(DarkroomError):
    """The resource is in a state that does not allow the operation."""

    code = grpc.StatusCode.FAILED_PRECONDITION
    reason = "JOB_STATE"


class ModelNotServedError(FailedPreconditionError):
    """No live worker serves the model, and submits for such models are refused."""

    reason = "MODEL_NOT_SERVED"


class QuotaExceededError(DarkroomError):
    """The caller is over one of its limits (or a model's queue is full): `limit` names
    it, `subject` whose limit it is (`owner:<name>`, `model:<name>`), `retry_after` when
    trying again makes sense."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    reason = "QUOTA_EXCEEDED"

    def __init__(
        self, message: str, *, limit: str, subject: str, description: str, retry_after: timedelta
    ) -> None:
        super().__init__(message, metadata={"limit": limit})
        self.limit = limit
        self.subject = subject
        self.description = description
        self.retry_after = retry_after


class UnauthenticatedError(DarkroomError):
    """The caller gave no valid credentials."""

    code = grpc.StatusCode.UNAUTHENTICATED
    reason = "UNAUTHENTICATED"


class UnavailableError(DarkroomError):
    """A dependency (database, Redis, storage) cannot be reached; retry later."""

    code = grpc.StatusCode.UNAVAILABLE
    reason = "DEPENDENCY_UNAVAILABLE"


class InternalError(DarkroomError):
    """An unexpected failure; details are logged, never sent."""

    code = grpc.StatusCode.INTERNAL
    reason = "INTERNAL"


# Low-level failures that mean "a dependency is down or overloaded; retry later".
_UNAVAILABLE: tuple[tuple[type[BaseException], str], ...] = (
    (sqlalchemy.exc.OperationalError, "the job database is unavailable"),
    (psycopg.OperationalError, "the job database is unavailable"),
    (psycopg.InterfaceError, "the job database is unavailable"),
    (sqlalchemy.exc.InterfaceError, "the job database is unavailable"),
    (sqlalchemy.exc.TimeoutError, "the job database is overloaded"),
    (redis.exceptions.ConnectionError, "the queue is unavailable"),
    (redis.exceptions.TimeoutError, "the queue is unavailable"),
    # TimeoutError is an OSError: it comes first, or it would never be named.
    (TimeoutError, "a dependency timed out"),
    (OSError, "a dependency is unavailable"),
)


def translate(exc: BaseException) -> DarkroomError | None:
    """Map a low-level exception to a Darkroom error, or None when it is unexpected."""
    if isinstance(exc, DarkroomError):
        return exc
    if isinstance(exc, sqlalchemy.exc.DBAPIError) and exc.connection_invalidated:
        return UnavailableError("the job database is unavailable")
    for kind, message in _UNAVAILABLE:
        if isinstance(exc, kind):
            return UnavailableError(message)
    return None


def _pack(message: Message) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


def to_status(error: DarkroomError) -> status_pb2.Status:
    """The `google.rpc.Status` a caller receives for `error`."""
    info = error_details_pb2.ErrorInfo(reason=error.reason, domain=DOMAIN, metadata=error.metadata)
    details = [_pack(info)]
    if isinstance(error, InvalidArgumentError) and error.violations:
        bad_request = error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(
                    field=violation.field, description=violation.description
                )
                for violation in error.violations
            ]
        )
        details.append(_pack(bad_request))
    if isinstance(error, QuotaExceededError):
        violation = error_details_pb2.QuotaFailure.Violation(
            subject=error.subject, description=error.description
        )
        details.append(_pack(error_details_pb2.QuotaFailure(violations=[violation])))
        delay = duration_pb2.Duration()
        delay.FromTimedelta(error.retry_after)
        details.append(_pack(error_details_pb2.RetryInfo(retry_delay=delay)))
    return status_pb2.Status(code=error.code.value[0], message=error.message, details=details)


def grpc_code(code: int) -> grpc.StatusCode:
    """The `grpc.StatusCode` for a numeric `google.rpc.Code`."""
    for status_code in grpc.StatusCode:
        if status_code.value[0] == code:
            return status_code
    return grpc.StatusCode.UNKNOWN


__all__ = [
    "AlreadyExistsError",
    "DarkroomError",
    "FailedPreconditionError",
    "FieldViolation",
    "InternalError",
    "InvalidArgumentError",
    "ModelNotServedError",
    "NotFoundError",
    "QuotaExceededError",
    "UnauthenticatedError",
    "UnavailableError",
    "grpc_code",
    "to_status",
    "translate",
]
