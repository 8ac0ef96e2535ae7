"""`watch`: from a snapshot to the terminal event, resuming by itself when the Events
server goes away, without gaps or duplicates."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import redis.asyncio

from darkroom import events
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
            kinds = [str(event.WhichOneof("kind")) for event in client.watch(job.id)]
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
    assert [event.WhichOneof("kind") for event in received] == ["snapshot"]
