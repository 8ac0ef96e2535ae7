"""WatchJob: order, resume without gaps or duplicates, snapshots after gaps, terminal always."""

from __future__ import annotations

import asyncio
import uuid
from typing import TypeAlias

import grpc
import pytest
import redis.asyncio

from darkroom import events
from darkroom.config import Settings
from darkroom.services.events.app import EventsApp
from darkroom.v1 import events_service_pb2, events_service_pb2_grpc, job_pb2
from tests.helpers import Caller, rich_error
from tests.services.events.conftest import Driver, collect, metadata

Stub: TypeAlias = "events_service_pb2_grpc.EventsServiceAsyncStub"


def kinds(received: list[events.JobEvent]) -> list[str]:
    # Position events are live-only and come as the queue moves: not part of the log.
    return [
        str(event.WhichOneof("kind"))
        for event in received
        if event.WhichOneof("kind") != "position"
    ]


async def _full_run(driver: Driver, job_id: str, steps: int = 3) -> None:
    await driver.start(job_id)
    for step in range(1, steps + 1):
        await driver.progress(job_id, step, steps)
    await driver.succeed(job_id)


async def test_live_watch_sees_snapshot_then_every_event_in_order(
    events_stub: Stub, driver: Driver, queued_job: str
) -> None:
    watching = asyncio.create_task(collect(events_stub, queued_job))
    await asyncio.sleep(0.2)
    await _full_run(driver, queued_job)
    received = await watching
    assert kinds(received) == [
        "snapshot",
        "started",
        "progress",
        "progress",
        "progress",
        "succeeded",
    ]
    snapshot = received[0]
    assert snapshot.snapshot.job.state == job_pb2.JOB_STATE_QUEUED
    assert snapshot.event_id  # covers the `queued` event already in the log
    logged = [event for event in received if event.WhichOneof("kind") != "position"]
    ids = [event.event_id for event in logged]
    assert ids == sorted(ids, key=lambda i: tuple(map(int, i.split("-"))))
    assert len(set(ids)) == len(ids)
    assert all(event.job_id == queued_job for event in received)
    assert [e.progress.progress.step for e in received if e.HasField("progress")] == [1, 2, 3]
    assert received[-1].succeeded.job.state == job_pb2.JOB_STATE_SUCCEEDED


async def test_resume_from_every_event_is_exact(
    events_stub: Stub,
    driver: Driver,
    alice: Caller,
    redis_client: redis.asyncio.Redis,
    settings: Settings,
) -> None:
    job_id = (await alice.submit(prompt="resume")).job.id
    await driver.start(job_id)
    for step in range(1, 6):
        await driver.progress(job_id, step, 5)
    event_log = events.EventLog(redis_client, settings.key_prefix)
    logged = [entry_id for entry_id, _ in await event_log.read(job_id)]
    finishing = asyncio.create_task(_finish_later(driver, job_id))
    for index, after in enumerate(logged):
        received = await collect(events_stub, job_id, after=after)
        # Exactly the events after the resume point, none twice, then the terminal.
        assert [e.event_id for e in received[:-1]] == logged[index + 1 :]
        assert received[-1].WhichOneof("kind") == "succeeded"
        assert "snapshot" not in kinds(received)
    await finishing


async def _finish_later(driver: Driver, job_id: str) -> None:
    await asyncio.sleep(0.1)
    await driver.succeed(job_id)


async def test_resume_after_a_trimmed_stretch_gets_a_snapshot_first(
    events_stub: Stub,
    driver: Driver,
    alice: Caller,
    redis_client: redis.asyncio.Redis,
    settings: Settings,
) -> None:
    job_id = (await alice.submit(prompt="trimmed")).job.id
    await driver.start(job_id)
    first = await driver.progress(job_id, 1, 40)
    for step in range(2, 41):
        await driver.progress(job_id, step, 40)
    event_log = events.EventLog(redis_client, settings.key_prefix)
    await redis_client.xtrim(event_log.key(job_id), maxlen=5, approximate=False)
    newest = await event_log.last(job_id)
    assert newest is not None
    last = newest[0]
    watching = asyncio.create_task(collect(events_stub, job_id, after=first))
    await asyncio.sleep(0.2)
    await driver.succeed(job_id)
    received = await watching
    assert kinds(received) == ["snapshot", "succeeded"]
    assert received[0].event_id == last
    assert received[0].snapshot.job.state == job_pb2.JOB_STATE_RUNNING


async def test_a_lost_log_is_followed_through_the_row_to_the_terminal(
    events_stub: Stub,
    driver: Driver,
    alice: Caller,
    redis_client: redis.asyncio.Redis,
    settings: Settings,
) -> None:
    job_id = (await alice.submit(prompt="lost log")).job.id
    await driver.start(job_id)
    watching = asyncio.create_task(collect(events_stub, job_id))
    await asyncio.sleep(0.2)
    # The whole log disappears (as after a Redis restart), and the terminal event is
    # never written: only the row knows the job ended.
    await redis_client.delete(settings.keys.events(job_id))
    await driver.progress(job_id, 1, 3)
    await redis_client.delete(settings.keys.events(job_id))
    await driver.succeed(job_id, publish=False)
    received = await watching
    assert received[0].WhichOneof("kind") == "snapshot"
    assert received[-1].WhichOneof("kind") == "snapshot"
    assert received[-1].snapshot.job.state == job_pb2.JOB_STATE_SUCCEEDED


async def test_terminal_job_gets_its_snapshot_and_the_stream_closes(
    events_stub: Stub, driver: Driver, queued_job: str
) -> None:
    await _full_run(driver, queued_job)
    # A fresh watch, and a resume from before what the log still holds.
    for after in ("", "1-0"):
        received = await collect(events_stub, queued_job, after=after)
        assert kinds(received) == ["snapshot"]
        assert received[0].snapshot.job.state == job_pb2.JOB_STATE_SUCCEEDED


async def test_terminal_job_without_its_terminal_event_gets_a_snapshot(
    events_stub: Stub, driver: Driver, queued_job: str
) -> None:
    await driver.start(queued_job)
    first = await driver.progress(queued_job, 1, 2)
    await driver.succeed(queued_job, publish=False)
    received = await collect(events_stub, queued_job, after=first)
    assert kinds(received) == ["snapshot"]
    assert received[0].snapshot.job.state == job_pb2.JOB_STATE_SUCCEEDED


async def test_cancelled_job_streams_its_cancellation(
    events_stub: Stub, alice: Caller, queued_job: str
) -> None:
    watching = asyncio.create_task(collect(events_stub, queued_job))
    await asyncio.sleep(0.2)
    await alice.cancel(queued_job)
    received = await watching
    assert kinds(received) == ["snapshot", "cancelled"]


async def test_backlog_progress_collapses_to_the_latest(
    events_stub: Stub, driver: Driver, alice: Caller
) -> None:
    job_id = (await alice.submit(prompt="backlog")).job.id
    await driver.start(job_id)
    first = await driver.progress(job_id, 1, 60)
    for step in range(2, 61):
        await driver.progress(job_id, step, 60)
    finishing = asyncio.create_task(_finish_later(driver, job_id))
    received = await collect(events_stub, job_id, after=first)
    await finishing
    assert kinds(received) == ["progress", "succeeded"]
    assert received[0].progress.progress.step == 60


@pytest.mark.parametrize(
    ("job_id", "after", "fields"),
    [
        ("nope", "", {"job_id"}),
        (str(uuid.uuid4()), "garbage", {"after_event_id"}),
        ("", "1-x", {"job_id", "after_event_id"}),
        # Numbers the pattern allows but Redis cannot hold (each part is below 2^64), and
        # the very last id, which Redis refuses to read after.
        (str(uuid.uuid4()), "99999999999999999999-0", {"after_event_id"}),
        (str(uuid.uuid4()), "1-18446744073709551616", {"after_event_id"}),
        (str(uuid.uuid4()), "18446744073709551615-18446744073709551615", {"after_event_id"}),
    ],
)
async def test_malformed_requests_are_invalid_argument(
    events_stub: Stub, job_id: str, after: str, fields: set[str]
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await collect(events_stub, job_id, after=after)
    error = rich_error(raised.value)
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert set(error.violations) == fields


async def test_another_owners_job_is_not_found(events_stub: Stub, queued_job: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await collect(events_stub, queued_job, token="bob-token")
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await collect(events_stub, str(uuid.uuid4()))
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize("token", ["", "garbage"])
async def test_watch_needs_a_valid_token(events_stub: Stub, queued_job: str, token: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await collect(events_stub, queued_job, token=token)
    assert raised.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_watchers_that_leave_leave_nothing_behind(
    events_app: EventsApp, events_stub: Stub, alice: Caller
) -> None:
    jobs = [(await alice.submit(prompt=f"leaver {i}")).job.id for i in range(20)]
    await asyncio.sleep(0.1)
    baseline_tasks = len(asyncio.all_tasks())
    baseline_watchers = events_app.notifier.watcher_count
    calls = [
        events_stub.WatchJob(events_service_pb2.WatchJobRequest(job_id=job_id), metadata=metadata())
        for job_id in jobs
    ]
    for call in calls:
        await call.read()  # the snapshot: every watcher is registered now
    assert events_app.notifier.watcher_count == baseline_watchers + 20
    for call in calls:
        call.cancel()
    async with asyncio.timeout(10):
        while events_app.notifier.watcher_count != baseline_watchers:
            await asyncio.sleep(0.05)
    assert events_app.notifier.job_count == baseline_watchers
    await asyncio.sleep(0.2)
    assert len(asyncio.all_tasks()) <= baseline_tasks
