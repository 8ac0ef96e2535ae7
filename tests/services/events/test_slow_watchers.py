"""A watcher whose client stops reading: once a write stalls, what piled up in the log
reaches it as the latest progress and every state change, in order."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncGenerator
from datetime import UTC, datetime

from darkroom import events
from darkroom.config import Settings
from darkroom.events import EventLog, JobEvent
from darkroom.services.events.app import EventsApp
from darkroom.services.events.watch import SLOW_WRITE, Watch, WatchSettings
from darkroom.store import JobStore
from tests.services.events.conftest import Driver

# Fewer than a read's backlog threshold, so only the stalled write can collapse them.
FEW = 5
# More than one read's batch, so the stalled watcher must read on to the log's end.
MANY = 250


def _watch(
    events_app: EventsApp, store: JobStore, settings: Settings, job_id: str
) -> AsyncGenerator[JobEvent]:
    """Alice's watch of `job_id` on the Events app's own watcher machinery, driven here
    without gRPC: waiting before taking the next event is a write that does not complete."""
    watch = Watch(
        store=store,
        redis=events_app.readers,
        notifier=events_app.notifier,
        key_prefix=settings.key_prefix,
        settings=WatchSettings(),
    )
    stream = watch.events("alice", uuid.UUID(job_id), "")
    assert isinstance(stream, AsyncGenerator)
    return stream


def _described(event: JobEvent) -> str:
    kind = str(event.WhichOneof("kind"))
    if kind == "progress":
        return f"progress {event.progress.attempt}/{event.progress.progress.step}"
    return kind


async def test_a_stalled_watcher_gets_the_latest_progress_and_every_state_change(
    events_app: EventsApp,
    store: JobStore,
    settings: Settings,
    driver: Driver,
    event_log: EventLog,
    queued_job: str,
) -> None:
    stream = _watch(events_app, store, settings, queued_job)
    try:
        async with asyncio.timeout(20):
            assert (await anext(stream)).WhichOneof("kind") == "snapshot"
            await driver.start(queued_job)
            await driver.progress(queued_job, 1, MANY)
            assert _described(await anext(stream)) == "started"
            assert _described(await anext(stream)) == "progress 1/1"

            # The client stops reading: the write of "progress 1/1" does not complete
            # while the job moves on, through a retry, to a second attempt.
            backlog = [events.progress(queued_job, 1, step, MANY) for step in range(2, 2 + FEW)]
            backlog += [
                events.retrying(queued_job, 1, 14, "worker lost", datetime.now(UTC)),
                events.queued(queued_job, 1),
                events.started(queued_job, 2, "worker-2"),
            ]
            backlog += [events.progress(queued_job, 2, step, MANY) for step in range(1, MANY + 1)]
            await event_log.append_many(backlog)
            await asyncio.sleep(SLOW_WRITE * 4)

            caught_up = [_described(await anext(stream)) for _ in range(4)]
            assert caught_up == ["retrying", "queued", "started", f"progress 2/{MANY}"]
            await driver.succeed(queued_job)
            assert _described(await anext(stream)) == "succeeded"
    finally:
        await stream.aclose()


async def test_a_watcher_that_keeps_up_gets_every_event(
    events_app: EventsApp,
    store: JobStore,
    settings: Settings,
    driver: Driver,
    queued_job: str,
) -> None:
    stream = _watch(events_app, store, settings, queued_job)
    received: list[str] = []
    try:
        async with asyncio.timeout(20):
            assert (await anext(stream)).WhichOneof("kind") == "snapshot"
            await driver.start(queued_job)
            for step in range(1, FEW + 1):
                await driver.progress(queued_job, step, FEW)
            await driver.succeed(queued_job)
            received = [_described(event) async for event in stream]
    finally:
        await stream.aclose()
    assert received == [
        "started",
        *(f"progress 1/{step}" for step in range(1, FEW + 1)),
        "succeeded",
    ]
