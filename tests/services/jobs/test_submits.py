"""The submit batcher on real Postgres and Redis: batches form under load and only then,
each caller gets its own answer, and one bad batch does not fail its neighbours."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import psycopg
import pytest
import redis.asyncio
from arq.connections import ArqRedis
from sqlalchemy.ext.asyncio import AsyncEngine

from darkroom import events, queue
from darkroom.config import Settings
from darkroom.errors import UnavailableError
from darkroom.events import EventLog
from darkroom.inserts import JobInserter
from darkroom.models import JobRecord
from darkroom.services.jobs.submits import SubmitBatcher
from darkroom.store import JobStore
from darkroom.validation import JobRequest
from tests.helpers import job_request

Jobs = Sequence[tuple[str, JobRequest]]


class CountingInserter(JobInserter):
    """The real inserter, recording the size of every batch, and able to hold one."""

    def __init__(self, engine: AsyncEngine) -> None:
        super().__init__(engine)
        self.batches: list[int] = []
        self.hold: asyncio.Event | None = None

    async def insert(self, jobs: Jobs, max_attempts: int) -> list[tuple[JobRecord, bool]]:
        self.batches.append(len(jobs))
        if self.hold is not None:
            await self.hold.wait()
        return await super().insert(jobs, max_attempts)


@dataclass
class Batching:
    batcher: SubmitBatcher
    inserter: CountingInserter
    settings: Settings
    redis: ArqRedis


@contextlib.asynccontextmanager
async def _running(
    settings: Settings, inserter: JobInserter, **options: Any
) -> AsyncIterator[tuple[SubmitBatcher, ArqRedis]]:
    """A batcher on `inserter` with its own Redis client, closed (drained) on exit."""
    arq_redis = queue.connect(settings)
    batcher = SubmitBatcher(
        settings,
        inserter=inserter,
        queue=queue.JobQueue(arq_redis, settings),
        event_log=EventLog(arq_redis, settings.key_prefix),
        redis=arq_redis,
        **options,
    )
    try:
        yield batcher, arq_redis
    finally:
        await batcher.close()
        await arq_redis.aclose()
        await arq_redis.connection_pool.disconnect()


@pytest.fixture
async def batching(
    settings: Settings, engine: AsyncEngine, request: pytest.FixtureRequest
) -> AsyncIterator[Batching]:
    linger = getattr(request, "param", 0.002)
    scoped = settings.model_copy(update={"key_prefix": f"{settings.key_prefix}-batch"})
    inserter = CountingInserter(engine)
    async with _running(scoped, inserter, linger=linger) as (batcher, arq_redis):
        yield Batching(batcher, inserter, scoped, arq_redis)


async def _announced(batching: Batching, job: JobRecord, client: redis.asyncio.Redis) -> bool:
    entries = await events.EventLog(client, batching.settings.key_prefix).read(job.id)
    queued = [event for _, event in entries]
    state = await queue.JobQueue(batching.redis, batching.settings).message_state(
        job.id, 0, job.model
    )
    return [event.WhichOneof("kind") for event in queued] == ["queued"] and state == "waiting"


async def test_submits_under_load_share_batches_and_keep_their_own_rows(
    batching: Batching, store: JobStore, redis_client: redis.asyncio.Redis
) -> None:
    requests = [job_request(f"load {index}") for index in range(60)]
    results = await asyncio.gather(
        *(batching.batcher.submit("batched", request) for request in requests)
    )
    # Fewer statements than submits: they were batched.
    assert sum(batching.inserter.batches) == 60
    assert len(batching.inserter.batches) < 60
    assert max(batching.inserter.batches) > 1
    for request, (row, created) in zip(requests, results, strict=True):
        assert created
        assert row.request_id == request.request_id
        assert row.prompt == request.spec.prompt
        stored = await store.get("batched", row.id)
        assert stored is not None
        assert stored.prompt == request.spec.prompt
        assert await _announced(batching, row, redis_client)
    assert len({row.id for row, _ in results}) == 60


@pytest.mark.parametrize("batching", [3_600.0], indirect=True)
async def test_a_submit_on_an_idle_server_does_not_linger(batching: Batching) -> None:
    # Lingering an hour would time this out: an idle writer writes at once.
    for index in range(3):
        _row, created = await asyncio.wait_for(
            batching.batcher.submit("idle", job_request(f"idle {index}")), timeout=30
        )
        assert created
    assert batching.inserter.batches == [1, 1, 1]


async def test_a_caller_gone_before_its_batch_is_left_out(
    batching: Batching, store: JobStore
) -> None:
    batching.inserter.hold = asyncio.Event()
    first = asyncio.create_task(batching.batcher.submit("gone", job_request("first")))
    await asyncio.sleep(0.05)  # the writer now holds the first batch
    abandoned = job_request("abandoned")
    second = asyncio.create_task(batching.batcher.submit("gone", abandoned))
    kept = job_request("kept")
    third = asyncio.create_task(batching.batcher.submit("gone", kept))
    await asyncio.sleep(0.05)
    second.cancel()
    batching.inserter.hold.set()
    _row, created = await first
    assert created
    _kept_row, kept_created = await third
    assert kept_created
    with pytest.raises(asyncio.CancelledError):
        await second
    assert batching.inserter.batches == [1, 1]
    owned = await store.list_owned("gone", state=None, before=None, limit=10)
    assert {job.prompt for job in owned} == {"first", "kept"}


class FailingInserter(JobInserter):
    """Fails every batch of more than one with `error`; single rows go through."""

    def __init__(self, engine: AsyncEngine, error: Exception) -> None:
        super().__init__(engine)
        self.error = error
        self.batches: list[int] = []

    async def insert(self, jobs: Jobs, max_attempts: int) -> list[tuple[JobRecord, bool]]:
        self.batches.append(len(jobs))
        if len(jobs) > 1:
            raise self.error
        return await super().insert(jobs, max_attempts)


async def _submit_together(
    settings: Settings, inserter: JobInserter, owner: str, count: int
) -> list[tuple[JobRecord, bool] | BaseException]:
    async with _running(settings, inserter) as (batcher, _):
        # Submitted in one go, before the writer first runs: they form one batch.
        return await asyncio.gather(
            *(batcher.submit(owner, job_request(f"{owner} {index}")) for index in range(count)),
            return_exceptions=True,
        )


async def test_a_batch_that_fails_over_its_rows_is_retried_row_by_row(
    settings: Settings, engine: AsyncEngine
) -> None:
    inserter = FailingInserter(engine, psycopg.errors.DeadlockDetected("deadlock detected"))
    results = await _submit_together(settings, inserter, "split", 5)
    assert inserter.batches == [5, 1, 1, 1, 1, 1]
    rows = [result for result in results if not isinstance(result, BaseException)]
    assert len(rows) == 5
    assert all(created for _, created in rows)
    assert len({row.id for row, _ in rows}) == 5


async def test_a_batch_that_cannot_reach_the_database_fails_without_retries(
    settings: Settings, engine: AsyncEngine
) -> None:
    error = psycopg.OperationalError("connection refused")
    inserter = FailingInserter(engine, error)
    results = await _submit_together(settings, inserter, "unreachable", 5)
    assert inserter.batches == [5]
    assert all(result is error for result in results)


async def test_ids_are_new_for_every_submit(batching: Batching) -> None:
    first, _ = await batching.batcher.submit("ids", job_request())
    second, _ = await batching.batcher.submit("ids", job_request())
    assert first.id != second.id
    assert uuid.UUID(str(first.id)).version == 7


async def test_a_submit_not_written_in_time_is_unavailable_and_says_if_it_may_be_recorded(
    settings: Settings, engine: AsyncEngine, store: JobStore
) -> None:
    hurried = settings.model_copy(update={"database_timeout": timedelta(seconds=0.3)})
    inserter = CountingInserter(engine)
    inserter.hold = asyncio.Event()
    async with _running(hurried, inserter) as (batcher, _):
        stalled = asyncio.create_task(batcher.submit("slow", job_request("stalled")))
        await asyncio.sleep(0.05)  # its batch is being written (held)
        queued = asyncio.create_task(batcher.submit("slow", job_request("queued")))
        started = asyncio.get_running_loop().time()
        with pytest.raises(UnavailableError, match="same request_id") as in_flight:
            await stalled
        with pytest.raises(UnavailableError, match="nothing was recorded") as waiting:
            await queued
        assert asyncio.get_running_loop().time() - started < 1
        assert in_flight.value.code.name == waiting.value.code.name == "UNAVAILABLE"
        inserter.hold.set()  # the stalled batch reaches the database after all
    # Recorded, as its caller was told it might be; the waiting one was left out.
    owned = await store.list_owned("slow", state=None, before=None, limit=10)
    assert [job.prompt for job in owned] == ["stalled"]
    assert inserter.batches == [1]


async def test_the_announce_is_bounded_apart_from_the_row(
    settings: Settings, engine: AsyncEngine, store: JobStore
) -> None:
    # A row written just inside the database timeout still gets its announce's own time:
    # the caller hears OK, not UNAVAILABLE.
    hurried = settings.model_copy(update={"database_timeout": timedelta(seconds=0.5)})
    inserter = CountingInserter(engine)
    inserter.hold = asyncio.Event()
    async with _running(hurried, inserter) as (batcher, arq_redis):
        original = arq_redis.pipeline

        def slow_pipeline(*args: Any, **kwargs: Any) -> Any:
            pipe = original(*args, **kwargs)
            execute = pipe.execute

            async def slowly(*a: Any, **k: Any) -> Any:
                await asyncio.sleep(0.3)
                return await execute(*a, **k)

            pipe.execute = slowly  # type: ignore[method-assign]
            return pipe

        arq_redis.pipeline = slow_pipeline  # type: ignore[method-assign]
        submitted = asyncio.create_task(batcher.submit("late", job_request("late")))
        await asyncio.sleep(0.35)
        inserter.hold.set()
        row, created = await submitted
    assert created
    assert await store.get("late", row.id) is not None
