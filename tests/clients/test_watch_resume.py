"""Unit tests of `darkroom_client.watching`: which ends of a stream the watch resumes
after, against a scripted EventsService on a real gRPC server (the Events service itself
only ends streams this way under load)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest
from google.protobuf import duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from darkroom.v1 import events_service_pb2, events_service_pb2_grpc, job_pb2
from darkroom_client import AsyncDarkroomClient, ResourceExhausted
from darkroom_client.retry import RetryPolicy

JobEvent = events_service_pb2.JobEvent
JOB_ID = "0190a0f0-0000-7000-8000-000000000000"
QUICK = RetryPolicy(max_attempts=4, initial_backoff=0.01, max_backoff=0.02)


def _snapshot(
    event_id: str, state: job_pb2.JobState.ValueType = job_pb2.JOB_STATE_RUNNING
) -> JobEvent:
    event = JobEvent(job_id=JOB_ID, event_id=event_id)
    event.snapshot.job.id, event.snapshot.job.state = JOB_ID, state
    return event


def _progress(event_id: str, step: int) -> JobEvent:
    event = JobEvent(job_id=JOB_ID, event_id=event_id)
    event.progress.progress.step, event.progress.progress.total_steps = step, 9
    return event


def _succeeded(event_id: str) -> JobEvent:
    event = JobEvent(job_id=JOB_ID, event_id=event_id)
    event.succeeded.job.id, event.succeeded.job.state = JOB_ID, job_pb2.JOB_STATE_SUCCEEDED
    return event


def _exhausted(retry_after: float | None) -> status_pb2.Status:
    status = status_pb2.Status(code=code_pb2.RESOURCE_EXHAUSTED, message="too many watches")
    if retry_after is not None:
        hint = error_details_pb2.RetryInfo(retry_delay=duration_pb2.Duration())
        hint.retry_delay.FromMilliseconds(int(retry_after * 1000))
        status.details.add().Pack(hint)
    return status


@dataclass
class Stream:
    """What one WatchJob call gets: these events, then this status (None: stay open)."""

    events: list[JobEvent]
    status: status_pb2.Status | None = None


@dataclass
class Scripted(events_service_pb2_grpc.EventsServiceServicer):
    """Answers the n-th WatchJob call with `streams[n]`, and records each resume token."""

    streams: list[Stream]
    requests: list[str] = field(default_factory=list)

    async def WatchJob(
        self,
        request: events_service_pb2.WatchJobRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> AsyncIterator[events_service_pb2.WatchJobResponse]:
        self.requests.append(request.after_event_id)
        stream = self.streams[len(self.requests) - 1]
        for event in stream.events:
            yield events_service_pb2.WatchJobResponse(event=event)
        if stream.status is None:
            await asyncio.Event().wait()  # open until the client goes
        await context.abort_with_status(rpc_status.to_status(stream.status))


@pytest.fixture
def scripted() -> Scripted:
    return Scripted([])


@pytest.fixture
async def client(scripted: Scripted) -> AsyncIterator[AsyncDarkroomClient]:
    server = grpc.aio.server()
    events_service_pb2_grpc.add_EventsServiceServicer_to_server(scripted, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    target = f"127.0.0.1:{port}"
    async with AsyncDarkroomClient(target, target, watch_retry=QUICK) as darkroom:
        yield darkroom
    await server.stop(0)


def _cancelled() -> status_pb2.Status:
    return status_pb2.Status(code=code_pb2.CANCELLED, message="CANCELLED")


async def test_a_stream_the_server_cancelled_is_resumed_from_the_last_event(
    client: AsyncDarkroomClient, scripted: Scripted
) -> None:
    scripted.streams += [
        Stream([_snapshot("5-0"), _progress("6-0", 1)], _cancelled()),
        Stream([], _cancelled()),  # cancelled before any event, as a burst's excess is
        Stream([_progress("7-0", 2), _succeeded("8-0")]),
    ]
    async with asyncio.timeout(10):
        received = [event async for event in client.watch(JOB_ID)]
    assert [event.event_id for event in received] == ["5-0", "6-0", "7-0", "8-0"]
    assert scripted.requests == ["", "6-0", "6-0"]


async def test_resource_exhausted_with_a_retry_hint_is_resumed_after_the_hint(
    client: AsyncDarkroomClient, scripted: Scripted
) -> None:
    scripted.streams += [
        Stream([], _exhausted(retry_after=0.5)),
        Stream([_snapshot("9-0", job_pb2.JOB_STATE_SUCCEEDED)]),
    ]
    loop = asyncio.get_running_loop()
    began = loop.time()
    async with asyncio.timeout(10):
        received = [event async for event in client.watch(JOB_ID)]
    assert [event.event_id for event in received] == ["9-0"]
    assert scripted.requests == ["", ""]
    assert loop.time() - began >= 0.5  # the hint, not the policy's 20 ms backoff


async def test_resource_exhausted_without_a_hint_is_not_retried(
    client: AsyncDarkroomClient, scripted: Scripted
) -> None:
    scripted.streams += [Stream([], _exhausted(retry_after=None))]

    async def watch() -> None:
        async for _ in client.watch(JOB_ID):
            pass

    with pytest.raises(ResourceExhausted):
        await asyncio.wait_for(watch(), 10)
    assert scripted.requests == [""]


async def test_a_watch_its_caller_cancels_is_not_resumed(
    client: AsyncDarkroomClient, scripted: Scripted
) -> None:
    scripted.streams += [Stream([_snapshot("5-0")]), Stream([_snapshot("5-0")])]
    received: list[JobEvent] = []

    async def watch() -> None:
        async for event in client.watch(JOB_ID):
            received.append(event)

    watching = asyncio.create_task(watch())
    async with asyncio.timeout(10):
        while not received:
            await asyncio.sleep(0.01)
    watching.cancel()
    with pytest.raises(asyncio.CancelledError):
        await watching
    await asyncio.sleep(0.2)  # a resume, if any, would have been sent by now
    assert scripted.requests == [""]
