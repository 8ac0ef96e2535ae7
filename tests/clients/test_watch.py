"""`watch`: from a snapshot to the terminal event, resuming by itself when the Events
server goes away, without gaps or duplicates."""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta

import pytest
import redis.asyncio

from darkroom import events
from darkroom.convert import job_to_proto
from darkroom.store import JobStore
from darkroom.v1 import events_service_pb2, job_pb2
from darkroom_client import DarkroomClient, DeadlineExceeded
from darkroom_client.jobs import ends_watch
from tests.clients.conftest import GatedPipeline, Recorder, StackFactory

JobEvent = events_service_pb2.JobEvent


def _key(event: JobEvent) -> tuple[int, int]:
    millis, sequence = event.event_id.split("-")
    return int(millis), int(sequence)


def _logged(received: list[JobEvent]) -> list[JobEvent]:
    return [event for event in received if event.WhichOneof("kind") != "snapshot"]


async def _until_step(events: AsyncIterator[JobEvent], received: list[JobEvent], step: int) -> str:
    """Read events into `received` until the progress event of `step`; its id."""
    while True:
        event = await anext(events)
        received.append(event)
        if event.HasField("progress") and event.progress.progress.step == step:
            return event.event_id


async def test_watch_resumes_after_the_events_server_restarts_mid_job(
    make_stack: StackFactory,
) -> None:
    pipeline = GatedPipeline(2, 4)
    stack = await make_stack(pipeline)
    recorder = Recorder()
    client = stack.client(interceptors=recorder.interceptors)
    job = await client.submit("resume me", width=64, height=64, steps=5)
    events = client.watch(job.id)
    received: list[JobEvent] = []
    async with asyncio.timeout(20):
        held_at = await _until_step(events, received, 2)
        await stack.restart_events()  # the open stream ends with UNAVAILABLE
        pipeline.release(2)
        await _until_step(events, received, 4)  # read through the resumed stream
        pipeline.release(4)
        received += [event async for event in events]

    kinds = [event.WhichOneof("kind") for event in received]
    assert kinds[0] == "snapshot"
    assert kinds.count("snapshot") == 1  # the resume continued from the event id
    assert kinds[-1] == "succeeded"
    assert received[-1].succeeded.job.state == job_pb2.JOB_STATE_SUCCEEDED
    logged = _logged(received)
    ids = [event.event_id for event in logged]
    assert len(ids) == len(set(ids))
    assert [_key(event) for event in logged] == sorted(_key(event) for event in logged)
    steps = [event.progress.progress.step for event in logged if event.HasField("progress")]
    assert steps == sorted(set(steps))
    assert {2, 4, 5} <= set(steps)

    watches = recorder.sent("WatchJob")
    assert len(watches) >= 2
    assert watches[0].after_event_id == ""
    assert watches[1].after_event_id == held_at


async def test_watch_resumes_after_an_event_id_and_ends_at_a_terminal_snapshot(
    make_stack: StackFactory, redis_client: redis.asyncio.Redis
) -> None:
    stack = await make_stack()
    client = stack.client()
    job = await client.submit("watched twice", width=64, height=64, steps=3)
    first = [event async for event in client.watch(job.id)]
    assert ends_watch(first[-1])
    entries = await events.EventLog(redis_client, stack.settings.key_prefix).read(job.id)
    logged = [entry_id for entry_id, _ in entries]
    assert len(logged) == 6  # queued, started, 3 x progress, succeeded

    resumed = [event async for event in client.watch(job.id, logged[0])]
    assert [event.event_id for event in resumed] == logged[1:]
    assert [event.WhichOneof("kind") for event in resumed][-1] == "succeeded"

    again = [event async for event in client.watch(job.id)]  # a finished job: its snapshot
    assert [event.WhichOneof("kind") for event in again] == ["snapshot"]
    assert again[0].snapshot.job.state == job_pb2.JOB_STATE_SUCCEEDED
    assert again[0].event_id == logged[-1]


async def test_blocking_watch_yields_until_the_end_and_can_stop_early(
    make_stack: StackFactory,
) -> None:
    stack = await make_stack(generator=False)

    def work() -> tuple[list[str], list[str]]:
        with DarkroomClient(stack.jobs_target, stack.events_target, token="alice-token") as client:
            job = client.submit("queued forever", width=64, height=64)
            for event in client.watch(job.id):  # stops early: closes the stream
                assert event.WhichOneof("kind") == "snapshot"
                break
            client.cancel(job.id)
            kinds = [_kind(event) for event in client.watch(job.id) if _kind(event) != "position"]
            states = [event.snapshot.job.state for event in client.watch(job.id)]
            return kinds, [job_pb2.JobState.Name(state) for state in states]

    kinds, states = await asyncio.to_thread(work)
    assert kinds == ["snapshot"]
    assert states == ["JOB_STATE_CANCELLED"]


async def test_watch_timeout_bounds_the_whole_watch(make_stack: StackFactory) -> None:
    stack = await make_stack(generator=False)
    client = stack.client()
    job = await client.submit("never runs", width=64, height=64)
    received: list[JobEvent] = []

    async def watch() -> None:
        async for event in client.watch(job.id, timeout=0.3):
            received.append(event)

    with pytest.raises(DeadlineExceeded):
        await watch()
    assert [_kind(event) for event in received if _kind(event) != "position"] == ["snapshot"]


# A job that reports hundreds of steps, watched by callers that take 2 s over each event.
STEPS = 300
SLOW_CALLER_S = 2.0


async def _run_job(log: events.EventLog, store: JobStore, job_id: str) -> float:
    """Start the job, report every step at 100 a second, succeed; when it ended."""
    loop = asyncio.get_running_loop()
    row = await store.claim(uuid.UUID(job_id), 0, "steady-worker", timedelta(minutes=1))
    assert row is not None
    await log.append(events.started(job_id, 1, "steady-worker"))
    for step in range(1, STEPS + 1):
        await log.append(events.progress(job_id, 1, step, STEPS))
        await asyncio.sleep(0.01)
    done = await store.succeed(uuid.UUID(job_id), 1, [], "m", "v")
    assert done is not None
    await log.append(events.terminal(job_to_proto(done)))
    return loop.time()


def _kind(event: JobEvent) -> str:
    """The kind of an event (queue `position` events come and go with the queue)."""
    return str(event.WhichOneof("kind"))


def _steps(received: list[JobEvent]) -> list[int]:
    return [event.progress.progress.step for event in received if event.HasField("progress")]


async def test_a_slow_caller_gets_the_terminal_event_within_seconds_of_the_end(
    make_stack: StackFactory, redis_client: redis.asyncio.Redis, store: JobStore
) -> None:
    stack = await make_stack(generator=False)
    client = stack.client()
    job = await client.submit("many steps", width=64, height=64, steps=50)
    loop = asyncio.get_running_loop()
    arrivals: dict[str, float] = {}
    received: dict[str, list[JobEvent]] = {"slow": [], "fast": [], "blocking": []}
    opened = threading.Barrier(2)

    async def slow() -> None:
        async for event in client.watch(job.id):
            received["slow"].append(event)
            if ends_watch(event):
                arrivals["slow"] = loop.time()
            else:
                await asyncio.sleep(SLOW_CALLER_S)  # the caller's own work on each event

    async def fast() -> None:
        received["fast"] = [event async for event in client.watch(job.id)]

    def blocking() -> None:
        with DarkroomClient(stack.jobs_target, stack.events_target, token="alice-token") as sync:
            for event in sync.watch(job.id):
                received["blocking"].append(event)
                if event.HasField("snapshot"):
                    opened.wait(10)
                if ends_watch(event):
                    arrivals["blocking"] = loop.time()
                else:
                    threading.Event().wait(SLOW_CALLER_S)

    watchers = [
        asyncio.create_task(slow()),
        asyncio.create_task(fast()),
        asyncio.create_task(asyncio.to_thread(blocking)),
    ]
    async with asyncio.timeout(60):  # without collapsing: 300 progress events x 2 s each
        await asyncio.to_thread(opened.wait, 10)
        await asyncio.sleep(0.2)  # the async watchers are open too
        ended = await _run_job(
            events.EventLog(redis_client, stack.settings.key_prefix), store, job.id
        )
        await asyncio.gather(*watchers)

    for name in ("slow", "blocking"):
        # The caller finishes the event in hand, then perhaps the latest progress; then
        # the end, instead of hundreds of stale steps.
        assert arrivals[name] - ended < 15, name
        kinds = [_kind(event) for event in received[name] if _kind(event) != "position"]
        assert kinds[:2] == ["snapshot", "started"]
        assert kinds[-1] == "succeeded"
        steps = _steps(received[name])
        assert len(steps) < STEPS / 10, name
        assert steps == sorted(set(steps))
    # A caller that keeps up gets (almost) every step: collapsing is for the slow only.
    steps = _steps(received["fast"])
    assert steps == sorted(set(steps))
    assert len(steps) >= STEPS * 0.8
    assert steps[-1] == STEPS
    assert received["fast"][-1].WhichOneof("kind") == "succeeded"
