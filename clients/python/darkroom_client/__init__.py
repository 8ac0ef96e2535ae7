"""Darkroom clients: the Python client library and the `darkroom` CLI.

`AsyncDarkroomClient` (asyncio) and `DarkroomClient` (blocking) submit, get, list, cancel
and watch jobs, and `generate` images in one call; failures are typed `DarkroomError`s.
"""

from __future__ import annotations

from darkroom_client.aio import AsyncDarkroomClient
from darkroom_client.errors import (
    AlreadyExists,
    DarkroomError,
    DeadlineExceeded,
    FailedPrecondition,
    FieldViolation,
    Internal,
    InvalidArgument,
    JobCancelled,
    JobEnded,
    JobFailed,
    NotFound,
    OutputError,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
)
from darkroom_client.jobs import GenerateResult, SpecFields
from darkroom_client.retry import RetryPolicy
from darkroom_client.sync import DarkroomClient

__all__ = [
    "AlreadyExists",
    "AsyncDarkroomClient",
    "DarkroomClient",
    "DarkroomError",
    "DeadlineExceeded",
    "FailedPrecondition",
    "FieldViolation",
    "GenerateResult",
    "Internal",
    "InvalidArgument",
    "JobCancelled",
    "JobEnded",
    "JobFailed",
    "NotFound",
    "OutputError",
    "ResourceExhausted",
    "RetryPolicy",
    "SpecFields",
    "Unauthenticated",
    "Unavailable",
]
