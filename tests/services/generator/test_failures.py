"""Failure classification: which errors another attempt could fix, and what the row says."""

from __future__ import annotations

import grpc
import pytest
import redis.exceptions
import sqlalchemy.exc
from google.api_core import exceptions as google_errors

from darkroom.services.generator.failures import Kind, PermanentError, classify


@pytest.mark.parametrize(
    "exc",
    [
        google_errors.ServiceUnavailable("gcs is down"),
        google_errors.TooManyRequests("slow down"),
        sqlalchemy.exc.OperationalError("SELECT 1", {}, Exception("connection refused")),
        redis.exceptions.ConnectionError("redis is down"),
        TimeoutError("timed out"),
        ConnectionResetError("reset"),
    ],
)
def test_dependency_failures_are_transient(exc: BaseException) -> None:
    failure = classify(exc)
    assert (failure.kind, failure.code) == (Kind.TRANSIENT, grpc.StatusCode.UNAVAILABLE)
    assert failure.message.startswith("transient failure:")


def test_out_of_memory_fails_at_once_and_says_what_to_change() -> None:
    failure = classify(RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert (failure.kind, failure.code) == (Kind.PERMANENT, grpc.StatusCode.RESOURCE_EXHAUSTED)
    assert "lower width, height or num_images" in failure.message


def test_bad_parameters_and_refused_storage_fail_at_once() -> None:
    bad = classify(ValueError("height must be divisible by 8"))
    assert (bad.kind, bad.code) == (Kind.PERMANENT, grpc.StatusCode.INVALID_ARGUMENT)
    assert "divisible by 8" in bad.message
    refused = classify(google_errors.Forbidden("no access to the bucket"))
    assert (refused.kind, refused.code) == (Kind.PERMANENT, grpc.StatusCode.INTERNAL)


def test_our_own_permanent_errors_keep_their_code_and_anything_else_is_unknown() -> None:
    ours = classify(PermanentError(grpc.StatusCode.DEADLINE_EXCEEDED, "too slow"))
    assert (ours.kind, ours.code, ours.message) == (
        Kind.PERMANENT,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        "too slow",
    )
    unknown = classify(KeyError("surprise"))
    assert (unknown.kind, unknown.code) == (Kind.UNKNOWN, grpc.StatusCode.INTERNAL)
