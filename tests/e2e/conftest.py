"""Cross-service flows: a whole stack per test (see tests/clients/conftest.py), called
through raw stubs where a test reads status details."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import grpc
import pytest

from darkroom.v1 import events_service_pb2_grpc, jobs_service_pb2_grpc
from tests.clients.conftest import Stack, StackFactory, make_stack  # noqa: F401 - the fixture
from tests.helpers import Caller

__all__ = ["Callers", "Stack", "StackFactory"]

# (The asyncio stub type exists for type checkers only: named as a string.)
Callers = Callable[
    [Stack, str], Awaitable[tuple[Caller, "events_service_pb2_grpc.EventsServiceAsyncStub"]]
]


@pytest.fixture
async def callers() -> AsyncIterator[Callers]:
    """`await callers(stack, token)`: a Jobs caller and an Events stub for one stack."""
    channels: list[grpc.aio.Channel] = []

    async def make(
        stack: Stack, token: str
    ) -> tuple[Caller, events_service_pb2_grpc.EventsServiceAsyncStub]:
        jobs = grpc.aio.insecure_channel(stack.jobs_target)
        events = grpc.aio.insecure_channel(stack.events_target)
        channels.extend([jobs, events])
        caller = Caller(jobs_service_pb2_grpc.JobsServiceStub(jobs), token)
        stub: events_service_pb2_grpc.EventsServiceAsyncStub
        stub = events_service_pb2_grpc.EventsServiceStub(events)
        return caller, stub

    yield make
    for channel in channels:
        await channel.close()
