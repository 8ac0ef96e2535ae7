"""An Events server on the run's settings, and helpers to watch jobs through it."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import grpc
import pytest

from darkroom import events
from darkroom.config import Settings
from darkroom.convert import job_to_proto
from darkroom.events import EventLog
from darkroom.models import State
from darkroom.queue import connect
from darkroom.services.events.app import EventsApp
from darkroom.store import JobStore
from darkroom.v1 import events_service_pb2, events_service_pb2_grpc
from tests.helpers import Caller

JobEvent = events_service_pb2.JobEvent


@pytest.fixture(scope="session")
async def events_stub(
    events_app: EventsApp,
) -> AsyncIterator[events_service_pb2_grpc.EventsServiceAsyncStub]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{events_app.port}") as channel:
        yield events_service_pb2_grpc.EventsServiceStub(channel)


@pytest.fixture(scope="session")
async def event_log(settings: Settings) -> AsyncIterator[EventLog]:
    """The generator's event writer, on its own connection."""
    client = connect(settings)
    yield EventLog(client, settings.key_prefix)
    await client.aclose()
    await client.connection_pool.disconnect()


def metadata(token: str = "alice-token") -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


async def collect(
    stub: events_service_pb2_grpc.EventsServiceAsyncStub,
    job_id: str,
    after: str = "",
    token: str = "alice-token",
    timeout: float = 30,
) -> list[JobEvent]:
    """Every event of one WatchJob call, until the server closes the stream."""
    call = stub.WatchJob(
        events_service_pb2.WatchJobRequest(job_id=job_id, after_event_id=after),
        metadata=metadata(token),
        timeout=timeout,
    )
    return [response.event async for response in call]


@dataclass
class Driver:
    """Moves a job through its life as a generator would: row first, then its event."""

    store: JobStore
    log: EventLog

    async def start(self, job_id: str) -> None:
        row = await self.store.claim(uuid.UUID(job_id), 0, "test-worker", timedelta(minutes=1))
        assert row is not None
        await self.log.append(events.started(job_id, 1, "test-worker"))

    async def progress(self, job_id: str, step: int, total: int) -> str:
        return await self.log.append(events.progress(job_id, 1, step, total))

    async def succeed(self, job_id: str, *, publish: bool = True) -> None:
        row = await self.store.succeed(uuid.UUID(job_id), 1, [], "m", "v")
        assert row is not None
        assert row.state == State.SUCCEEDED
        if publish:
            await self.log.append(events.terminal(job_to_proto(row)))


@pytest.fixture
def driver(store: JobStore, event_log: EventLog) -> Driver:
    return Driver(store, event_log)


@pytest.fixture
async def queued_job(alice: Caller) -> str:
    """A job no worker will take (no generator runs for the session's prefix)."""
    return (await alice.submit(prompt="watch me", width=64, height=64, steps=3)).job.id


async def read_rest(call: Any) -> list[JobEvent]:
    """The remaining events of a call already read with `read()`, until the stream ends
    (but `position` events: live-only, they come as the queue moves; test_position.py
    follows them)."""
    received = []
    while (response := await call.read()) is not grpc.aio.EOF:
        if response.event.WhichOneof("kind") != "position":
            received.append(response.event)
    return received


async def next_event(call: Any) -> JobEvent:
    """The next event of a stream that must still be open (but `position` events)."""
    while True:
        response = await call.read()
        assert isinstance(response, events_service_pb2.WatchJobResponse), response
        if response.event.WhichOneof("kind") != "position":
            return response.event
