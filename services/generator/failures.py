"""What went wrong in an attempt, and whether another attempt could help."""

from __future__ import annotations

import enum
from dataclasses import dataclass

import grpc
import redis.exceptions
import sqlalchemy.exc
from google.api_core import exceptions as google_errors
from google.auth import exceptions as auth_errors


class Kind(enum.Enum):
    """How a failure is handled."""

    TRANSIENT = "transient"  # back to the queue with backoff while attempts remain
    PERMANENT = "permanent"  # FAILED at once: another attempt would fail the same way
    UNKNOWN = "unknown"  # retried like a transient one; a poison job runs out of attempts


@dataclass(frozen=True)
class Failure:
    """A classified failure: how to handle it and what the row's error says."""

    kind: Kind
    code: grpc.StatusCode
    message: str


class PermanentError(Exception):
    """Raised by our own code for a failure that no retry can fix."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code


_TRANSIENT: tuple[type[BaseException], ...] = (
    google_errors.ServerError,
    google_errors.TooManyRequests,
    google_errors.RetryError,
    auth_errors.TransportError,
    sqlalchemy.exc.OperationalError,
    sqlalchemy.exc.InterfaceError,
    sqlalchemy.exc.TimeoutError,
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    ConnectionError,
    TimeoutError,
)


def _out_of_memory(exc: BaseException) -> bool:
    name = type(exc).__name__
    return name == "OutOfMemoryError" or (
        isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()
    )


def classify(exc: BaseException) -> Failure:
    """Classify an exception raised while running an attempt."""
    if isinstance(exc, PermanentError):
        return Failure(Kind.PERMANENT, exc.code, str(exc))
    if _out_of_memory(exc):
        return Failure(
            Kind.PERMANENT,
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "out of memory at this size: lower width, height or num_images",
        )
    if isinstance(exc, _TRANSIENT):
        return Failure(Kind.TRANSIENT, grpc.StatusCode.UNAVAILABLE, f"transient failure: {exc!r}")
    if isinstance(exc, google_errors.ClientError):
        return Failure(Kind.PERMANENT, grpc.StatusCode.INTERNAL, f"storage refused: {exc}")
    if isinstance(exc, ValueError | TypeError):
        return Failure(
            Kind.PERMANENT,
            grpc.StatusCode.INVALID_ARGUMENT,
            f"invalid parameters for this model: {exc}",
        )
    return Failure(Kind.UNKNOWN, grpc.StatusCode.INTERNAL, f"attempt failed: {exc!r}")
