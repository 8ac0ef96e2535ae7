"""The `darkroom` CLI's exit codes, and which one reports what."""

from __future__ import annotations

from darkroom.v1 import job_pb2
from darkroom_client import jobs
from darkroom_client.errors import (
    FailedPrecondition,
    InvalidArgument,
    JobCancelled,
    JobFailed,
    NotFound,
)

EXIT_OK = 0
EXIT_JOB_FAILED = 1
EXIT_USAGE = 2
EXIT_JOB_CANCELLED = 3
EXIT_ERROR = 4
EXIT_NOT_FOUND = 5
EXIT_JOB_STATE = 6
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141


def exit_code(error: BaseException) -> int:
    """The exit code that reports `error`."""
    if isinstance(error, JobFailed):
        return EXIT_JOB_FAILED
    if isinstance(error, JobCancelled):
        return EXIT_JOB_CANCELLED
    if isinstance(error, NotFound):
        return EXIT_NOT_FOUND
    if isinstance(error, InvalidArgument):
        return EXIT_USAGE
    if isinstance(error, FailedPrecondition):
        return EXIT_JOB_STATE
    return EXIT_ERROR


def state_exit_code(state: jobs.JobStateValue) -> int:
    """The exit code for a job that ended in `state`."""
    if state == job_pb2.JOB_STATE_FAILED:
        return EXIT_JOB_FAILED
    if state == job_pb2.JOB_STATE_CANCELLED:
        return EXIT_JOB_CANCELLED
    return EXIT_OK
