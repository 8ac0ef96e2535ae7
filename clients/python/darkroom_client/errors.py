"""Typed errors for Darkroom clients, decoded from the `google.rpc` status details.

Every failed RPC becomes a `DarkroomError` subclass chosen by its status code in
`from_rpc_error`, the one place that maps codes to classes. The server's `ErrorInfo`
gives `reason` and `metadata`; its `BadRequest` gives `InvalidArgument.violations`, every
field violation in the server's order (a field may have several).
A job that ends badly is not an RPC error: `generate` raises `JobFailed` or
`JobCancelled`, which carry the final job.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple

import grpc
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from darkroom.v1 import job_pb2


class DarkroomError(Exception):
    """Base of every error a Darkroom call reports.

    `code` is the gRPC status code, `message` the server's message, `reason` the stable
    `ErrorInfo.reason` (empty when the server sent none, e.g. when it was unreachable) and
    `metadata` the `ErrorInfo.metadata`.
    """

    code: grpc.StatusCode = grpc.StatusCode.UNKNOWN

    def __init__(
        self,
        message: str,
        *,
        code: grpc.StatusCode | None = None,
        reason: str = "",
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code
        self.message = message
        self.reason = reason
        self.metadata: dict[str, str] = dict(metadata or {})

    def __str__(self) -> str:
        reason = f" ({self.reason})" if self.reason and self.reason != self.code.name else ""
        return f"{self.code.name}{reason}: {self.message}"


class FieldViolation(NamedTuple):
    """One thing wrong with one field of a request (`spec.width`: "must be a multiple of 8")."""

    field: str
    description: str


class InvalidArgument(DarkroomError):
    """The request is invalid; `violations` lists every field violation, in order."""

    code = grpc.StatusCode.INVALID_ARGUMENT

    def __init__(
        self,
        message: str,
        *,
        code: grpc.StatusCode | None = None,
        reason: str = "",
        metadata: Mapping[str, str] | None = None,
        violations: Iterable[FieldViolation] = (),
    ) -> None:
        super().__init__(message, code=code, reason=reason, metadata=metadata)
        self.violations: list[FieldViolation] = list(violations)

    @property
    def fields(self) -> dict[str, list[str]]:
        """Each bad field with every description of what is wrong with it."""
        by_field: dict[str, list[str]] = {}
        for violation in self.violations:
            by_field.setdefault(violation.field, []).append(violation.description)
        return by_field

    def __str__(self) -> str:
        lines = [super().__str__()]
        lines += [f"  {v.field}: {v.description}" for v in self.violations]
        return "\n".join(lines)


class NotFound(DarkroomError):
    """No such job for this caller (another owner's job looks the same)."""

    code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(DarkroomError):
    """The request id was already used for a different request."""

    code = grpc.StatusCode.ALREADY_EXISTS


class FailedPrecondition(DarkroomError):
    """The job's state does not allow the operation (e.g. cancelling a finished job)."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class Unauthenticated(DarkroomError):
    """The token is missing or unknown."""

    code = grpc.StatusCode.UNAUTHENTICATED


class ResourceExhausted(DarkroomError):
    """The request is too large, or a limit was reached: `quota` says which (subject, such
    as `owner:alice` -> the limit), `retry_after` how many seconds to wait first (None
    when the server did not say)."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED

    def __init__(
        self,
        message: str,
        *,
        quota: Mapping[str, str] | None = None,
        retry_after: float | None = None,
        **rest: Any,
    ) -> None:
        super().__init__(message, **rest)
        self.quota: dict[str, str] = dict(quota or {})
        self.retry_after = retry_after


class Unavailable(DarkroomError):
    """The server, or something it depends on, cannot be reached; retry later."""

    code = grpc.StatusCode.UNAVAILABLE


class DeadlineExceeded(DarkroomError):
    """The call did not finish before its deadline."""

    code = grpc.StatusCode.DEADLINE_EXCEEDED


class Internal(DarkroomError):
    """The server failed unexpectedly."""

    code = grpc.StatusCode.INTERNAL


class OutputError(DarkroomError):
    """A generated image could not be fetched or did not match its recorded digest."""

    code = grpc.StatusCode.UNKNOWN


class JobEnded(Exception):
    """A job reached a terminal state other than SUCCEEDED; `job` is the final job."""

    def __init__(self, job: job_pb2.Job) -> None:
        self.job = job
        detail = f": {job.error.message}" if job.error.message else ""
        state = job_pb2.JobState.Name(job.state).removeprefix("JOB_STATE_").lower()
        super().__init__(f"job {job.id} {state}{detail}")


class JobFailed(JobEnded):
    """The job FAILED; `job.error` says why."""


class JobCancelled(JobEnded):
    """The job was CANCELLED."""


_BY_CODE: dict[grpc.StatusCode, type[DarkroomError]] = {
    cls.code: cls
    for cls in (
        InvalidArgument,
        NotFound,
        AlreadyExists,
        FailedPrecondition,
        Unauthenticated,
        ResourceExhausted,
        Unavailable,
        DeadlineExceeded,
        Internal,
    )
}


def _status(error: grpc.RpcError) -> status_pb2.Status | None:
    if not isinstance(error, grpc.Call | grpc.aio.AioRpcError):
        return None
    try:
        status: status_pb2.Status | None = rpc_status.from_call(error)
    except ValueError:  # the details disagree with the call's own code or message
        return None
    return status


def from_rpc_error(error: grpc.RpcError) -> DarkroomError:
    """The typed error for a failed gRPC call, with its `google.rpc` details decoded."""
    code: grpc.StatusCode = getattr(error, "code", lambda: grpc.StatusCode.UNKNOWN)()
    message: str = getattr(error, "details", lambda: "")() or ""
    reason, metadata, violations = "", {}, []
    quota: dict[str, str] = {}
    retry_after: float | None = None
    status = _status(error)
    if status is not None:
        for detail in status.details:
            if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                info = error_details_pb2.ErrorInfo()
                detail.Unpack(info)
                reason, metadata = info.reason, dict(info.metadata)
            elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                bad_request = error_details_pb2.BadRequest()
                detail.Unpack(bad_request)
                violations = [
                    FieldViolation(v.field, v.description) for v in bad_request.field_violations
                ]
            elif detail.Is(error_details_pb2.QuotaFailure.DESCRIPTOR):
                failure = error_details_pb2.QuotaFailure()
                detail.Unpack(failure)
                quota = {v.subject: v.description for v in failure.violations}
            elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
                retry = error_details_pb2.RetryInfo()
                detail.Unpack(retry)
                retry_after = retry.retry_delay.ToTimedelta().total_seconds()
    cls = _BY_CODE.get(code, DarkroomError)
    if cls is ResourceExhausted:
        return ResourceExhausted(
            message,
            code=code,
            reason=reason,
            metadata=metadata,
            quota=quota,
            retry_after=retry_after,
        )
    if cls is InvalidArgument:
        return InvalidArgument(
            message, code=code, reason=reason, metadata=metadata, violations=violations
        )
    return cls(message, code=code, reason=reason, metadata=metadata)


__all__ = [
    "AlreadyExists",
    "DarkroomError",
    "DeadlineExceeded",
    "FailedPrecondition",
    "FieldViolation",
    "Internal",
    "InvalidArgument",
    "JobCancelled",
    "JobEnded",
    "JobFailed",
    "NotFound",
    "OutputError",
    "ResourceExhausted",
    "Unauthenticated",
    "Unavailable",
    "from_rpc_error",
]
