"""A whole stack per test for the clients: Jobs, Events and a Generator on their own Redis
key prefix and storage folder, and pipelines whose pace a test controls."""

from __future__ import annotations

import asyncio
import itertools
import os
import shutil
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
import redis.asyncio
from PIL import Image

from darkroom.config import Settings
from darkroom.services.events.app import EventsApp
from darkroom.services.events.app import start as start_events
from darkroom.services.generator import pipeline as pipelines
from darkroom.services.generator.worker import Generator
from darkroom.services.generator.worker import start as start_generator
from darkroom.services.jobs.app import JobsApp
from darkroom.services.jobs.app import start as start_jobs
from darkroom_client.aio import AsyncDarkroomClient
from darkroom_client.retry import RetryPolicy

# The session's tiny diffusers model, built and loaded once (shared with the generator tests).
from tests.services.generator.conftest import tiny_pipeline  # noqa: F401

REPO_ROOT = Path(__file__).resolve().parents[2]
FAST_RETRY = RetryPolicy(max_attempts=20, initial_backoff=0.02, max_backoff=0.2)
_stack_numbers = itertools.count()


class GatedPipeline:
    """Paints flat images, but holds at each step in `holds` until `release(step)`.

    While it holds it keeps reporting the step, as a slow step would, so the worker
    still notices a cancellation or a shutdown and stops it.
    """

    model_id = "gated"
    model_version = "gated-1"

    def __init__(self, *holds: int) -> None:
        self._reached = {step: threading.Event() for step in holds}
        self._gates = {step: threading.Event() for step in holds}

    def release(self, step: int) -> None:
        self._gates[step].set()

    async def wait_reached(self, step: int, timeout: float = 10) -> None:
        reached = await asyncio.to_thread(self._reached[step].wait, timeout)
        assert reached, f"the pipeline never reached step {step}"

    def generate(
        self, request: pipelines.GenerationRequest, on_step: pipelines.StepCallback
    ) -> list[Image.Image]:
        for step in range(1, request.steps + 1):
            time.sleep(0.002)
            if not on_step(step, request.steps):
                raise pipelines.PipelineInterrupted("interrupted")
            if step in self._gates:
                self._reached[step].set()
                while not self._gates[step].wait(0.02):
                    if not on_step(step, request.steps):
                        raise pipelines.PipelineInterrupted("interrupted while held")
        return [Image.new("RGB", (request.width, request.height), (9, 99, 199))] * len(
            request.seeds
        )


def _method(details: grpc.aio.ClientCallDetails) -> str:
    method = details.method.decode() if isinstance(details.method, bytes) else details.method
    return method.rsplit("/", 1)[-1]


class _UnaryRecorder(grpc.aio.UnaryUnaryClientInterceptor):
    def __init__(self, requests: list[tuple[str, Any]]) -> None:
        self.requests = requests

    async def intercept_unary_unary(
        self, continuation: Any, client_call_details: grpc.aio.ClientCallDetails, request: Any
    ) -> Any:
        self.requests.append((_method(client_call_details), request))
        return await continuation(client_call_details, request)


class _StreamRecorder(grpc.aio.UnaryStreamClientInterceptor):
    def __init__(self, requests: list[tuple[str, Any]]) -> None:
        self.requests = requests

    async def intercept_unary_stream(
        self, continuation: Any, client_call_details: grpc.aio.ClientCallDetails, request: Any
    ) -> Any:
        self.requests.append((_method(client_call_details), request))
        return await continuation(client_call_details, request)


@dataclass
class Recorder:
    """Records every request a client sends (each attempt of each call), by method name:
    pass `recorder.interceptors` to the client."""

    requests: list[tuple[str, Any]] = field(default_factory=list)

    @property
    def interceptors(self) -> list[grpc.aio.ClientInterceptor]:
        # A gRPC channel files each interceptor under one kind only: one object per kind.
        return [_UnaryRecorder(self.requests), _StreamRecorder(self.requests)]

    def sent(self, method: str) -> list[Any]:
        return [request for name, request in self.requests if name == method]


@dataclass
class Stack:
    settings: Settings
    jobs: JobsApp
    events: EventsApp
    generator: Generator | None
    storage_root: Path
    clients: list[AsyncDarkroomClient] = field(default_factory=list)

    @property
    def jobs_target(self) -> str:
        return f"127.0.0.1:{self.jobs.port}"

    @property
    def events_target(self) -> str:
        return f"127.0.0.1:{self.events.port}"

    def client(self, token: str = "alice-token", **options: Any) -> AsyncDarkroomClient:
        """A client of this stack (closed by the fixture)."""
        options.setdefault("watch_retry", FAST_RETRY)
        client = AsyncDarkroomClient(self.jobs_target, self.events_target, token=token, **options)
        self.clients.append(client)
        return client

    async def restart_events(self) -> None:
        """Stop the Events server (open watches end with UNAVAILABLE), start it again on
        the same port."""
        port = self.events.port
        await self.events.stop(timedelta(0))
        self.events = await start_events(self.settings, f"127.0.0.1:{port}")

    def env(self, token: str = "alice-token") -> dict[str, str]:
        """Environment for a `darkroom` process that talks to this stack."""
        return {
            **os.environ,
            "DARKROOM_JOBS_TARGET": self.jobs_target,
            "DARKROOM_EVENTS_TARGET": self.events_target,
            "DARKROOM_TOKEN": token,
        }

    async def cli(
        self,
        *args: str,
        token: str = "alice-token",
        cwd: Path = REPO_ROOT,
        env: dict[str, str] | None = None,
    ) -> tuple[int, str, str]:
        """Run `darkroom ARGS` as a real process (`env` adds variables); its exit code,
        stdout and stderr."""
        env = {**self.env(token), **(env or {})}
        env["PYTHONPATH"] = str(REPO_ROOT)
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "darkroom_client.cli",
            *args,
            env=env,
            cwd=cwd,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=30)
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
        assert process.returncode is not None
        return process.returncode, stdout.decode(), stderr.decode()


StackFactory = Callable[..., Awaitable[Stack]]


@pytest.fixture
async def make_stack(
    settings: Settings, redis_client: redis.asyncio.Redis
) -> AsyncIterator[StackFactory]:
    """Start stacks: `make_stack(pipeline)` (default: a fast fake one), or
    `make_stack(generator=False)` for jobs that stay queued; other keywords change settings."""
    started: list[Stack] = []

    async def make(
        pipeline: pipelines.Pipeline | None = None, *, generator: bool = True, **changes: Any
    ) -> Stack:
        storage_root = Path(tempfile.mkdtemp(prefix="darkroom-client-storage-"))
        values: dict[str, Any] = {
            "key_prefix": f"{settings.key_prefix}-clients-{next(_stack_numbers)}",
            "storage_url": str(storage_root),
            "worker_id": f"worker-{uuid.uuid4().hex[:6]}",
            "retry_backoff": timedelta(milliseconds=50),
            "lease": timedelta(seconds=5),
            "heartbeat_interval": timedelta(seconds=1),
            "shutdown_grace": timedelta(seconds=1),
        }
        values.update(changes)
        stack_settings = settings.model_copy(update=values)
        jobs = await start_jobs(stack_settings, "127.0.0.1:0")
        events = await start_events(stack_settings, "127.0.0.1:0")
        worker = None
        if generator:
            worker = await start_generator(
                stack_settings, pipeline or pipelines.FakePipeline(step_seconds=0.002)
            )
        stack = Stack(stack_settings, jobs, events, worker, storage_root)
        started.append(stack)
        return stack

    yield make
    for stack in started:
        for client in stack.clients:
            await client.close()
        if stack.generator is not None:
            await stack.generator.stop(timedelta(seconds=1))
        await stack.events.stop(stack.settings.shutdown_grace)
        await stack.jobs.stop(stack.settings.shutdown_grace)
        shutil.rmtree(stack.storage_root, ignore_errors=True)
