"""CancelJob: QUEUED stops at once, RUNNING is asked to stop, terminal is refused."""

from __future__ import annotations

import uuid

import grpc
import pytest
import redis.asyncio
from sqlalchemy import func

from darkroom import events
from darkroom.config import Settings
from darkroom.models import State
from darkroom.store import JobStore
from darkroom.v1 import job_pb2
from tests.helpers import Caller, rich_error


async def _run(store: JobStore, job_id: str) -> None:
    """Put a job in RUNNING as a worker's claim would."""
    row = await store.transition(
        uuid.UUID(job_id),
        State.QUEUED,
        {
            "state": State.RUNNING,
            "attempt": 1,
            "worker_id": "test-worker",
            "lease_expires_at": func.now() + func.make_interval(0, 0, 0, 0, 0, 0, 30),
            "started_at": func.now(),
        },
        attempt=0,
    )
    assert row is not None


async def test_cancel_queued_job_is_immediate_and_terminal(
    alice: Caller, redis_client: redis.asyncio.Redis, settings: Settings
) -> None:
    job = (await alice.submit()).job
    cancelled = await alice.cancel(job.id)
    assert cancelled.state == job_pb2.JOB_STATE_CANCELLED
    assert cancelled.HasField("end_time")
    assert (await alice.get(job.id)).state == job_pb2.JOB_STATE_CANCELLED
    logged = await events.EventLog(redis_client, settings.key_prefix).last(job.id)
    assert logged is not None
    last = logged[1]
    assert last.WhichOneof("kind") == "cancelled"
    assert last.cancelled.job.state == job_pb2.JOB_STATE_CANCELLED


async def test_cancel_twice_is_failed_precondition(alice: Caller) -> None:
    job = (await alice.submit()).job
    await alice.cancel(job.id)
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await alice.cancel(job.id)
    error = rich_error(raised.value)
    assert error.code == grpc.StatusCode.FAILED_PRECONDITION
    assert error.metadata["state"] == "CANCELLED"


async def test_cancel_running_job_requests_a_stop(alice: Caller, store: JobStore) -> None:
    job = (await alice.submit()).job
    await _run(store, job.id)
    answer = await alice.cancel(job.id)
    assert answer.state == job_pb2.JOB_STATE_RUNNING
    assert answer.cancel_requested
    assert (await alice.get(job.id)).cancel_requested


@pytest.mark.parametrize("final", [State.SUCCEEDED, State.FAILED])
async def test_cancel_terminal_job_is_failed_precondition(
    alice: Caller, store: JobStore, final: State
) -> None:
    job = (await alice.submit()).job
    await _run(store, job.id)
    assert await store.transition(uuid.UUID(job.id), State.RUNNING, {"state": final}) is not None
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await alice.cancel(job.id)
    assert raised.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert (await alice.get(job.id)).state == job_pb2.JobState.Value(f"JOB_STATE_{final}")


@pytest.mark.parametrize("job_id", ["", "nope", "1234", str(uuid.uuid4()) + "x"])
async def test_malformed_job_ids_are_invalid_argument(alice: Caller, job_id: str) -> None:
    for call in (alice.get, alice.cancel):
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await call(job_id)
        error = rich_error(raised.value)
        assert error.code == grpc.StatusCode.INVALID_ARGUMENT
        assert set(error.violations) == {"job_id"}
