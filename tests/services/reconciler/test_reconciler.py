"""The reconciler repairs leases, lost messages, deadlines and missing terminal events."""

from __future__ import annotations

import asyncio
import itertools
import tempfile
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest
import redis.asyncio
from arq.constants import in_progress_key_prefix
from sqlalchemy import func, text, update

from darkroom import db, events, queue
from darkroom.config import Settings
from darkroom.convert import job_to_proto
from darkroom.events import EventLog
from darkroom.lifecycle import Lifecycle
from darkroom.models import JobRecord, JobRow, State
from darkroom.services.reconciler.reconciler import Reconciler
from darkroom.storage import LocalStorage
from darkroom.store import JobStore
from tests.conftest import create_database, drop_database
from tests.darkroom.test_fair_queue import _take
from tests.helpers import RUN_ID, job_request

_numbers = itertools.count()


def _lifecycle(store: JobStore, log: EventLog, jobs_queue: queue.JobQueue) -> Lifecycle:
    return Lifecycle(store, log, jobs_queue, LocalStorage(Path(tempfile.gettempdir())).url_for)


@dataclass
class World:
    settings: Settings
    store: JobStore
    queue: queue.JobQueue
    log: EventLog
    redis: redis.asyncio.Redis
    reconciler: Reconciler

    def another(self) -> Reconciler:
        return Reconciler(
            self.settings,
            lifecycle=_lifecycle(self.store, self.log, self.queue),
            event_log=self.log,
        )

    async def job(self, **values: object) -> JobRow:
        request = job_request("reconcile")
        row, _ = await self.store.create("reconciler", request, max_attempts=2)
        if values:
            async with self.store._sessions.begin() as session:  # test setup
                # Bypass the trigger (it stamps updated_at) to make the row look old.
                await session.execute(text("SET LOCAL session_replication_role = replica"))
                await session.execute(update(JobRow).where(JobRow.id == row.id).values(**values))
        fresh = await self.store.get_any(row.id)
        assert fresh is not None
        return fresh

    async def kinds(self, job_id: uuid.UUID) -> list[str]:
        entries = await events.EventLog(self.redis, self.settings.key_prefix).read(job_id)
        return [str(event.WhichOneof("kind")) for _, event in entries]

    async def claim_expired(self, row: JobRecord) -> JobRecord:
        claimed = await self.store.claim(row.id, row.attempt, "dead-worker", timedelta(0))
        assert claimed is not None
        return claimed


@pytest.fixture
async def world(postgres_admin_url: str, settings: Settings) -> AsyncIterator[World]:
    name = f"darkroom_reconcile_{RUN_ID}_{next(_numbers)}"
    url = create_database(postgres_admin_url, name)
    await asyncio.to_thread(db.migrate, url)
    own = settings.model_copy(
        update={
            "database_url": url,
            "key_prefix": f"{settings.key_prefix}-rec{next(_numbers)}",
            "retry_backoff": timedelta(0),
            "reconcile_stale_message": timedelta(seconds=1),
        }
    )
    engine = db.create_engine(url, pool_size=4)
    client = queue.connect(own)
    store = JobStore(engine)
    jobs_queue = queue.JobQueue(client, own)
    log = EventLog(client, own.key_prefix)
    reconciler = Reconciler(own, lifecycle=_lifecycle(store, log, jobs_queue), event_log=log)
    yield World(own, store, jobs_queue, log, client, reconciler)
    await client.aclose()
    await client.connection_pool.disconnect()
    await engine.dispose()
    await asyncio.to_thread(drop_database, postgres_admin_url, name)


async def test_expired_lease_goes_back_to_the_queue(world: World) -> None:
    row = await world.claim_expired(await world.job())
    report = await world.reconciler.run_once()
    assert report.requeued == 1
    after = await world.store.get_any(row.id)
    assert after is not None
    assert (after.state, after.attempt, after.worker_id) == (State.QUEUED, 1, None)
    assert "lease expired" in (after.error_message or "")
    assert await world.queue.message_state(row.id, 1, "tiny-sd") == "waiting"
    assert (await world.kinds(row.id))[-1] == "retrying"


async def test_expired_lease_on_the_last_attempt_fails_the_job(world: World) -> None:
    row = await world.job(attempt=1)
    await world.claim_expired(row)
    report = await world.reconciler.run_once()
    assert report.failed_lost == 1
    after = await world.store.get_any(row.id)
    assert after is not None
    assert after.state == State.FAILED
    assert after.attempt == after.max_attempts == 2
    assert "attempts are spent" in (after.error_message or "")
    assert (await world.kinds(row.id))[-1] == "failed"


async def test_a_live_lease_is_left_alone(world: World) -> None:
    row = await world.job()
    assert await world.store.claim(row.id, 0, "alive", timedelta(minutes=1)) is not None
    assert (await world.reconciler.run_once()).requeued == 0
    after = await world.store.get_any(row.id)
    assert after is not None
    assert after.state == State.RUNNING


async def test_cancel_requested_job_with_a_lost_worker_ends_cancelled(world: World) -> None:
    row = await world.claim_expired(await world.job())
    async with world.store._sessions.begin() as session:  # test setup
        await session.execute(
            update(JobRow).where(JobRow.id == row.id).values(cancel_requested=True)
        )
    await world.reconciler.run_once()
    after = await world.store.get_any(row.id)
    assert after is not None
    assert after.state == State.CANCELLED
    assert (await world.kinds(row.id))[-1] == "cancelled"


async def test_a_lost_message_is_enqueued_again_and_a_queued_one_is_not(world: World) -> None:
    old = func.now() - timedelta(seconds=10)
    lost = await world.job(updated_at=old)
    waiting = await world.job(updated_at=old)
    await world.queue.enqueue(waiting.id, 0, "tiny-sd")
    report = await world.reconciler.run_once()
    assert report.enqueued == 1
    assert await world.queue.message_state(lost.id, 0, "tiny-sd") == "waiting"
    assert await world.queue.message_state(waiting.id, 0, "tiny-sd") == "waiting"


async def test_a_message_taken_by_a_worker_that_died_is_released(world: World) -> None:
    row = await world.job(updated_at=func.now() - timedelta(seconds=10))
    await world.queue.enqueue(row.id, 0, "tiny-sd")
    arq_id = world.queue.arq_job_id(row.id, 0)
    await world.redis.set(in_progress_key_prefix + arq_id, b"1", px=600_000)
    assert await world.queue.message_state(row.id, 0, "tiny-sd") == "taken"
    assert (await world.reconciler.run_once()).enqueued == 1
    assert await world.queue.message_state(row.id, 0, "tiny-sd") == "waiting"


async def test_a_fresh_submit_is_given_time_to_enqueue(world: World) -> None:
    row = await world.job()
    assert (await world.reconciler.run_once()).enqueued == 0
    assert await world.queue.message_state(row.id, 0, "tiny-sd") == "missing"


async def test_queued_past_deadline_fails_as_expired(world: World) -> None:
    row = await world.job(deadline=func.now() - timedelta(seconds=1))
    assert (await world.reconciler.run_once()).expired == 1
    after = await world.store.get_any(row.id)
    assert after is not None
    assert after.state == State.FAILED
    assert after.error_code == 4  # DEADLINE_EXCEEDED
    assert (await world.kinds(row.id))[-1] == "failed"


async def test_a_missing_terminal_event_is_republished_once(world: World) -> None:
    row = await world.claim_expired(await world.job())
    done = await world.store.succeed(row.id, 1, [], "m", "v")
    assert done is not None
    await world.log.append(events.started(row.id, 1, "w"))
    assert (await world.reconciler.run_once()).republished == 1
    assert (await world.kinds(row.id))[-1] == "succeeded"
    assert (await world.reconciler.run_once()).republished == 0
    other = await world.claim_expired(await world.job())
    finished = await world.store.succeed(other.id, 1, [], "m", "v")
    assert finished is not None
    await world.log.append(events.terminal(job_to_proto(finished)))
    assert (await world.reconciler.run_once()).republished == 0


async def test_two_reconcilers_at_once_repair_each_job_once(world: World) -> None:
    rows = [await world.claim_expired(await world.job()) for _ in range(30)]
    first, second = await asyncio.gather(world.reconciler.run_once(), world.another().run_once())
    assert first.requeued + second.requeued == 30
    for row in rows:
        after = await world.store.get_any(row.id)
        assert after is not None
        assert (after.state, after.attempt) == (State.QUEUED, 1)
        assert (await world.kinds(row.id)).count("retrying") == 1


async def test_a_flushed_redis_gets_every_queue_back_in_fair_order(world: World) -> None:
    ids: dict[str, list[uuid.UUID]] = {"alice": [], "bob": []}
    for owner, count in (("alice", 600), ("bob", 3)):  # more than one scan batch
        for _ in range(count):
            row, _ = await world.store.create(owner, job_request(owner), max_attempts=2)
            ids[owner].append(row.id)
    async with world.store._sessions.begin() as session:  # test setup: make them look old
        await session.execute(text("SET LOCAL session_replication_role = replica"))
        await session.execute(update(JobRow).values(updated_at=func.now() - timedelta(seconds=9)))
    for pattern in world.settings.keys.everything:  # Redis lost everything
        async for key in world.redis.scan_iter(match=pattern, count=1000):
            await world.redis.delete(key)
    report = await world.reconciler.run_once()
    assert report.enqueued == 603
    taken = await _take(world.queue._redis, world.settings, 6)
    assert set(ids["bob"]) <= set(taken)  # bob's three come in turn, not after alice's 600
    assert [job_id for job_id in taken if job_id in ids["alice"]] == ids["alice"][:3]
    # The queues are whole again: a second pass re-enqueues at most the rows whose
    # messages this test took without running them, never the 597 still waiting.
    assert await world.queue.intact()
    assert (await world.reconciler.run_once()).enqueued <= len(taken)
