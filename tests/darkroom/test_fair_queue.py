"""The fair-share take against a real Redis: owners in turn (by weight), priority then age
within an owner, running limits, and positions that match the order jobs are taken in."""

from __future__ import annotations

import asyncio
import itertools
import uuid
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta

import pytest
import uuid_utils.compat as uuid_utils

from darkroom import queue
from darkroom.config import OwnerPolicy, Settings
from darkroom.consumer import Consumer
from darkroom.positions import QueuedJob, QueueView
from darkroom.queue import QueueMessage

MODEL = "tiny-sd"
_numbers = itertools.count()


@pytest.fixture
def scoped(settings: Settings) -> Settings:
    return settings.model_copy(
        update={"key_prefix": f"{settings.key_prefix}-fair-{next(_numbers)}"}
    )


@pytest.fixture
async def arq_redis(scoped: Settings) -> AsyncIterator[queue.QueueRedis]:
    client = queue.connect(scoped)
    yield client
    await client.aclose()
    await client.connection_pool.disconnect()


class Taker:
    """A handler that records each message; it holds each one until released when `hold`."""

    def __init__(self, hold: bool = False) -> None:
        self.taken: list[uuid.UUID] = []
        self.hold = hold
        self.arrived = asyncio.Event()
        self.released = asyncio.Event()

    async def __call__(self, message: QueueMessage) -> None:
        self.taken.append(message.job_id)
        self.arrived.set()
        if self.hold:
            await self.released.wait()

    async def until(self, count: int) -> None:
        async with asyncio.timeout(20):
            while len(self.taken) < count:
                self.arrived.clear()
                await self.arrived.wait()


def _consumer(redis: queue.QueueRedis, settings: Settings, taker: Taker) -> Consumer:
    return Consumer(
        redis,
        settings.queue_for(MODEL),
        taker,
        hold=timedelta(minutes=5),
        poll_delay=timedelta(seconds=0.1),
        keys=settings.keys,
    )


async def _take(redis: queue.QueueRedis, settings: Settings, count: int) -> list[uuid.UUID]:
    """The first `count` messages one worker takes, in order."""
    taker = Taker()
    consumer = _consumer(redis, settings, taker)
    running = asyncio.create_task(consumer.run())
    try:
        await taker.until(count)
    finally:
        consumer.stop()
        await running
    return taker.taken[:count]


async def _enqueue(
    jobs: queue.JobQueue, owner: str, count: int, priority: int = 0
) -> list[uuid.UUID]:
    ids = [uuid_utils.uuid7() for _ in range(count)]
    async with jobs._redis.pipeline(transaction=False) as pipe:  # many in one round trip
        for job_id in ids:
            jobs.enqueue_in(pipe, job_id, 0, MODEL, owner=owner, priority=priority)
        await pipe.execute()
    return ids


def _owners_of(taken: Sequence[uuid.UUID], by_owner: dict[str, list[uuid.UUID]]) -> list[str]:
    owner_of = {job_id: owner for owner, ids in by_owner.items() for job_id in ids}
    return [owner_of[job_id] for job_id in taken]


async def test_one_owners_backlog_cannot_starve_another(
    scoped: Settings, arq_redis: queue.QueueRedis
) -> None:
    jobs = queue.JobQueue(arq_redis, scoped)
    alice = await _enqueue(jobs, "alice", 2_000)
    first = await _take(arq_redis, scoped, 3)  # alice has been served meanwhile
    [bob] = await _enqueue(jobs, "bob", 1)
    taken = await _take(arq_redis, scoped, 2)
    assert first == alice[:3]
    assert bob in taken  # within the next two starts, behind none of alice's 1,997


async def test_owners_take_turns_by_weight(scoped: Settings, arq_redis: queue.QueueRedis) -> None:
    weighted = scoped.model_copy(update={"owner_policies": {"alice": OwnerPolicy(weight=3)}})
    jobs = queue.JobQueue(arq_redis, weighted)
    by_owner = {"alice": await _enqueue(jobs, "alice", 40), "bob": await _enqueue(jobs, "bob", 40)}
    owners = _owners_of(await _take(arq_redis, weighted, 20), by_owner)
    assert 14 <= owners.count("alice") <= 16  # three to one
    # Spread out, not in runs: bob never waits for more than three of alice's starts.
    runs = [len(list(run)) for owner, run in itertools.groupby(owners) if owner == "alice"]
    assert max(runs) <= 3


async def test_within_an_owner_higher_priority_first_then_oldest(
    scoped: Settings, arq_redis: queue.QueueRedis
) -> None:
    jobs = queue.JobQueue(arq_redis, scoped)
    normal = await _enqueue(jobs, "alice", 2)
    low = await _enqueue(jobs, "alice", 1, priority=-3)
    urgent = await _enqueue(jobs, "alice", 2, priority=5)
    taken = await _take(arq_redis, scoped, 5)
    assert taken == [*urgent, *normal, *low]


async def test_an_owner_at_its_running_limit_is_passed_over(
    scoped: Settings, arq_redis: queue.QueueRedis
) -> None:
    limited = scoped.model_copy(update={"owner_policies": {"alice": OwnerPolicy(max_running=1)}})
    jobs = queue.JobQueue(arq_redis, limited)
    alice = await _enqueue(jobs, "alice", 3)
    bob = await _enqueue(jobs, "bob", 3)
    busy = Taker(hold=True)
    worker = _consumer(arq_redis, limited, busy)
    holding = asyncio.create_task(worker.run())
    try:
        await busy.until(1)
        assert busy.taken == [alice[0]]
        # A second worker meanwhile serves only bob: alice already runs her one job.
        assert await _take(arq_redis, limited, 3) == bob
        busy.released.set()  # alice's job ends: her next one may start
        await busy.until(2)
        assert busy.taken[1] == alice[1]
    finally:
        busy.released.set()
        worker.stop()
        await holding


async def test_positions_match_the_order_jobs_are_taken_in(
    scoped: Settings, arq_redis: queue.QueueRedis
) -> None:
    weighted = scoped.model_copy(update={"owner_policies": {"carol": OwnerPolicy(weight=2)}})
    jobs = queue.JobQueue(arq_redis, weighted)
    by_owner = {
        "alice": await _enqueue(jobs, "alice", 12),
        "bob": await _enqueue(jobs, "bob", 3),
        "carol": await _enqueue(jobs, "carol", 8),
    }
    await _take(arq_redis, weighted, 4)  # turns have moved on: positions start mid-round
    view = QueueView(arq_redis, weighted, max_age=0)
    now = datetime.now(UTC) - timedelta(seconds=1)
    predicted = {}
    for owner, ids in by_owner.items():
        for job_id in ids:
            status = await view.status(QueuedJob(job_id, owner, MODEL, 0, now))
            if status.detail != "its place in the queue is being restored":  # taken already
                predicted[job_id] = status.jobs_ahead
    taken = await _take(arq_redis, weighted, len(predicted))
    assert {job_id: taken.index(job_id) for job_id in predicted} == predicted


async def test_owners_backing_off_never_hide_the_work_of_others(
    scoped: Settings, arq_redis: queue.QueueRedis
) -> None:
    jobs = queue.JobQueue(arq_redis, scoped)
    async with arq_redis.pipeline(transaction=False) as pipe:  # 600 owners, all retrying later
        for index in range(600):
            job_id = uuid_utils.uuid7()
            owner = f"owner-{index:03d}"
            jobs.enqueue_in(pipe, job_id, 1, MODEL, owner=owner, delay=timedelta(hours=1))
        await pipe.execute()
    [due] = await _enqueue(jobs, "zoe", 1)  # sorts after every one of them
    assert await _take(arq_redis, scoped, 1) == [due]


async def test_a_message_whose_worker_died_goes_back_to_its_line(
    scoped: Settings, arq_redis: queue.QueueRedis
) -> None:
    jobs = queue.JobQueue(arq_redis, scoped)
    [job_id] = await _enqueue(jobs, "alice", 1)
    doomed = Taker(hold=True)
    dying = Consumer(
        arq_redis,
        scoped.queue_for(MODEL),
        doomed,
        hold=timedelta(milliseconds=300),  # its hold runs out while it "hangs"
        poll_delay=timedelta(seconds=0.1),
        keys=scoped.keys,
    )
    hung = asyncio.create_task(dying.run())
    try:
        await doomed.until(1)
        view = QueueView(arq_redis, scoped, max_age=0)
        queued = QueuedJob(job_id, "alice", MODEL, 0, datetime.now(UTC) - timedelta(seconds=1))
        assert (await view.status(queued)).detail == "starting"  # held: out of its line
        await asyncio.sleep(0.4)
        assert await _take(arq_redis, scoped, 1) == [job_id]  # taken again by another
    finally:
        hung.cancel()
        await asyncio.gather(hung, return_exceptions=True)
