"""Each move of `darkroom.lifecycle` against real Postgres and Redis: the transition, then
its consequences in order, and none at all when the move did not happen."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import timedelta

import pytest
import redis.asyncio

from darkroom import queue
from darkroom.config import Settings
from darkroom.events import EventLog
from darkroom.lifecycle import EXPIRED_MESSAGE, Hooks, Lifecycle
from darkroom.models import JobRecord, State
from darkroom.store import JobStore
from tests.helpers import job_request

LEASE = timedelta(seconds=30)


class Recording(Hooks):
    """Records each move that committed, with the row's state then."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, State]] = []

    def after_commit(self, move: str, row: JobRecord) -> None:
        self.seen.append((move, row.state))


@pytest.fixture
async def arq_redis(settings: Settings) -> AsyncIterator[queue.QueueRedis]:
    client = queue.connect(settings)
    yield client
    await client.aclose()
    await client.connection_pool.disconnect()


@pytest.fixture
def event_log(redis_client: redis.asyncio.Redis, settings: Settings) -> EventLog:
    return EventLog(redis_client, settings.key_prefix)


@pytest.fixture
def hooks() -> Recording:
    return Recording()


@pytest.fixture
def lifecycle(
    store: JobStore,
    event_log: EventLog,
    arq_redis: queue.QueueRedis,
    settings: Settings,
    hooks: Recording,
) -> Lifecycle:
    return Lifecycle(store, event_log, queue.JobQueue(arq_redis, settings), hooks=hooks)


async def _job(store: JobStore, **changes: object) -> uuid.UUID:
    row, _ = await store.create("lifecycle", job_request("moves", **changes), max_attempts=2)
    return row.id


async def _kinds(event_log: EventLog, job_id: uuid.UUID) -> list[str]:
    return [str(event.WhichOneof("kind")) for _, event in await event_log.read(job_id)]


async def test_claim_then_succeed_publish_started_then_progress_and_succeeded(
    lifecycle: Lifecycle, store: JobStore, event_log: EventLog, hooks: Recording
) -> None:
    job_id = await _job(store)
    claimed = await lifecycle.claim(job_id, 0, "w1", LEASE)
    assert claimed is not None
    assert (claimed.state, claimed.attempt) == (State.RUNNING, 1)
    assert await lifecycle.claim(job_id, 0, "w2", LEASE) is None  # a duplicate delivery
    done = await lifecycle.succeed(job_id, 1, [], "m", "v")
    assert done is not None
    assert done.state is State.SUCCEEDED
    assert await _kinds(event_log, job_id) == ["started", "succeeded"]
    assert hooks.seen == [("succeed", State.SUCCEEDED)]


async def test_a_fenced_attempt_moves_nothing_and_publishes_nothing(
    lifecycle: Lifecycle, store: JobStore, event_log: EventLog, hooks: Recording
) -> None:
    job_id = await _job(store)
    assert await lifecycle.claim(job_id, 0, "w1", LEASE) is not None
    # Attempt 1 is no longer the job's: a newer attempt owns it.
    requeued = await lifecycle.requeue(job_id, 1, code=14, message="lost", delay=timedelta(0))
    assert requeued is not None
    assert await lifecycle.claim(job_id, 1, "w2", LEASE) is not None
    before = await _kinds(event_log, job_id)
    assert await lifecycle.succeed(job_id, 1, [], "m", "v") is None
    assert await lifecycle.fail(job_id, 1, 13, "boom") is None
    assert await lifecycle.stop_cancelled(job_id, 1) is None
    assert await _kinds(event_log, job_id) == before
    assert hooks.seen == []


async def test_requeue_publishes_retrying_then_enqueues_the_next_attempt(
    lifecycle: Lifecycle, store: JobStore, event_log: EventLog, settings: Settings
) -> None:
    job_id = await _job(store)
    assert await lifecycle.claim(job_id, 0, "w1", LEASE) is not None
    row = await lifecycle.requeue(job_id, 1, code=14, message="storage down", delay=LEASE)
    assert row is not None
    assert (row.state, row.attempt) == (State.QUEUED, 1)
    assert await _kinds(event_log, job_id) == ["started", "retrying"]
    assert await lifecycle.queue.message_state(job_id, 1, row.model) == "waiting"


async def test_requeue_of_a_job_whose_owner_cancelled_ends_it_cancelled(
    lifecycle: Lifecycle, store: JobStore, event_log: EventLog
) -> None:
    job_id = await _job(store)
    assert await lifecycle.claim(job_id, 0, "w1", LEASE) is not None
    _, changed = await lifecycle.cancel("lifecycle", job_id)  # RUNNING: cancel_requested
    assert changed
    assert await _kinds(event_log, job_id) == ["started"]  # nothing ended yet
    row = await lifecycle.requeue(job_id, 1, code=14, message="lost", delay=timedelta(0))
    assert row is not None
    assert row.state is State.CANCELLED
    assert await _kinds(event_log, job_id) == ["started", "cancelled"]


async def test_a_queued_cancel_and_an_expiry_each_end_the_job_once(
    lifecycle: Lifecycle, store: JobStore, event_log: EventLog
) -> None:
    cancelled = await _job(store)
    row, changed = await lifecycle.cancel("lifecycle", cancelled)
    assert changed
    assert row is not None
    assert row.state is State.CANCELLED
    again, changed_again = await lifecycle.cancel("lifecycle", cancelled)  # ended already
    assert again is not None
    assert not changed_again
    assert await _kinds(event_log, cancelled) == ["cancelled"]

    expiring = await _job(store, queue_timeout=timedelta(milliseconds=1))
    expired = await lifecycle.expire(expiring)
    assert expired is not None
    assert (expired.state, expired.error_message) == (State.FAILED, EXPIRED_MESSAGE)
    assert await lifecycle.expire(expiring) is None
    # An expired job's late message claims nothing and publishes no second terminal.
    assert await lifecycle.claim(expiring, 0, "w", LEASE) is None
    assert await _kinds(event_log, expiring) == ["failed"]
