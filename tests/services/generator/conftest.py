"""A whole stack per test: its own Redis key prefix, a Jobs server and a Generator."""

from __future__ import annotations

import asyncio
import itertools
import tempfile
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
import redis.asyncio

from darkroom import events
from darkroom.config import Settings
from darkroom.services.generator import pipeline as pipelines
from darkroom.services.generator.worker import Generator
from darkroom.services.generator.worker import start as start_generator
from darkroom.services.jobs.app import JobsApp
from darkroom.services.jobs.app import start as start_jobs
from darkroom.store import JobStore
from darkroom.v1 import events_service_pb2, job_pb2, jobs_service_pb2_grpc
from tests.helpers import Caller

TERMINAL = {job_pb2.JOB_STATE_SUCCEEDED, job_pb2.JOB_STATE_FAILED, job_pb2.JOB_STATE_CANCELLED}
_stack_numbers = itertools.count()


@pytest.fixture(scope="session")
def tiny_pipeline(tiny_model_path: Path) -> pipelines.Pipeline:
    """Loaded through the same from_pretrained path a real model takes."""
    return pipelines.load(str(tiny_model_path), device="cpu")


@dataclass
class Stack:
    settings: Settings
    jobs: JobsApp
    generator: Generator
    caller: Caller
    store: JobStore
    redis: redis.asyncio.Redis
    storage_root: Path

    async def wait(
        self, job_id: str, states: set[int] | None = None, timeout: float = 60
    ) -> job_pb2.Job:
        """Poll the job until it reaches one of `states` (terminal by default)."""
        wanted = states or TERMINAL
        async with asyncio.timeout(timeout):
            while True:
                job = await self.caller.get(job_id)
                if job.state in wanted:
                    return job
                await asyncio.sleep(0.02)

    async def events(self, job_id: str) -> list[events_service_pb2.JobEvent]:
        entries = await events.EventLog(self.redis, self.settings.key_prefix).read(job_id)
        return [event for _, event in entries]

    async def wait_for_event(self, job_id: str, kind: str, timeout: float = 30) -> None:
        async with asyncio.timeout(timeout):
            while not any(e.WhichOneof("kind") == kind for e in await self.events(job_id)):
                await asyncio.sleep(0.01)


StackFactory = Callable[..., Awaitable[Stack]]


@pytest.fixture
async def make_stack(
    settings: Settings,
    tiny_pipeline: pipelines.Pipeline,
    redis_client: redis.asyncio.Redis,
    store: JobStore,
) -> AsyncIterator[StackFactory]:
    """Start stacks with changed settings (and optionally another pipeline)."""
    started: list[tuple[Stack, grpc.aio.Channel]] = []

    async def make(pipeline: pipelines.Pipeline | None = None, **changes: Any) -> Stack:
        storage_root = Path(tempfile.mkdtemp(prefix="darkroom-storage-"))
        values: dict[str, Any] = {
            "key_prefix": f"{settings.key_prefix}-{next(_stack_numbers)}",
            "storage_url": str(storage_root),
            "worker_id": f"worker-{uuid.uuid4().hex[:6]}",
            "retry_backoff": timedelta(milliseconds=50),
            "lease": timedelta(seconds=5),
            "heartbeat_interval": timedelta(seconds=1),
            "shutdown_grace": timedelta(seconds=5),
        }
        values.update(changes)
        stack_settings = settings.model_copy(update=values)
        jobs = await start_jobs(stack_settings, "127.0.0.1:0")
        generator = await start_generator(stack_settings, pipeline or tiny_pipeline)
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{jobs.port}")
        caller = Caller(jobs_service_pb2_grpc.JobsServiceStub(channel), "alice-token")
        stack = Stack(stack_settings, jobs, generator, caller, store, redis_client, storage_root)
        started.append((stack, channel))
        return stack

    yield make
    for stack, channel in started:
        await channel.close()
        await stack.generator.stop(timedelta(seconds=5))
        await stack.jobs.stop(stack.settings.shutdown_grace)
