"""A stack of real processes (Jobs, Events, generators on the fake pipeline, a reconciler,
the gateway), each serving /metrics on a port of its own, for tests that scrape them."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import sys
import tempfile
import urllib.request
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from darkroom import db, devservers
from darkroom.config import DEV_TOKEN, Settings
from darkroom.v1 import events_service_pb2_grpc, jobs_service_pb2_grpc
from tests.clients.conftest import make_stack  # noqa: F401 - a fixture of the tracing tests
from tests.conftest import create_database, drop_database
from tests.helpers import Caller

MODELS = ["tiny-sd", "broken", "idle"]


@dataclass
class Process:
    """One service process and the port of its /metrics."""

    name: str
    process: asyncio.subprocess.Process
    metrics_port: int

    def scrape(self) -> list[Sample]:
        """Every sample of its /metrics, parsed by prometheus_client's own parser."""
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            text = response.read().decode()
        return [
            sample for family in text_string_to_metric_families(text) for sample in family.samples
        ]


@dataclass
class World:
    settings: Settings
    jobs_port: int
    events_port: int
    storage: Path
    log_dir: Path
    processes: dict[str, Process] = field(default_factory=dict)
    channels: list[grpc.aio.Channel] = field(default_factory=list)
    ports: set[int] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.ports |= {self.jobs_port, self.events_port}

    def env(self, **extra: str) -> dict[str, str]:
        s = self.settings
        return {
            **os.environ,
            "DARKROOM_DATABASE_URL": s.database_url,
            "DARKROOM_REDIS_URL": s.redis_url,
            "DARKROOM_KEY_PREFIX": s.key_prefix,
            "DARKROOM_STORAGE_URL": str(self.storage),
            "DARKROOM_MODELS": json.dumps(MODELS),
            "DARKROOM_JOBS_ADDRESS": f"127.0.0.1:{self.jobs_port}",
            "DARKROOM_EVENTS_ADDRESS": f"127.0.0.1:{self.events_port}",
            "DARKROOM_LEASE": "3",
            "DARKROOM_HEARTBEAT_INTERVAL": "0.5",
            "DARKROOM_RETRY_BACKOFF": "0.05",
            "DARKROOM_RECONCILE_INTERVAL": "0.3",
            "DARKROOM_MAX_ATTEMPTS": "2",
            "DARKROOM_SHUTDOWN_GRACE": "1",
            "DARKROOM_LOG_JSON": "true",
            **extra,
        }

    def port(self) -> int:
        """A free port none of this world's processes was given (a free port is only free
        until someone binds it: the Events port is chosen before Events starts)."""
        while (port := devservers.free_port()) in self.ports:
            pass
        self.ports.add(port)
        return port

    async def spawn(self, name: str, module: str, *args: str, **extra: str) -> Process:
        port = self.port()
        env = self.env(DARKROOM_METRICS_ADDRESS=f"127.0.0.1:{port}", **extra)
        with open(self.log_dir / f"{name}.log", "ab") as sink:  # noqa: ASYNC230 - instant
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", module, *args, env=env, stdout=sink, stderr=sink
            )
        started = Process(name, process, port)
        self.processes[name] = started
        await self._answering(started)
        return started

    async def _answering(self, process: Process) -> None:
        for _ in range(300):
            if process.process.returncode is not None:
                raise RuntimeError(f"{process.name} ended: see {self.log_dir}")
            with contextlib.suppress(OSError):
                await asyncio.to_thread(process.scrape)
                return
            await asyncio.sleep(0.05)
        raise RuntimeError(f"{process.name} serves no /metrics: see {self.log_dir}")

    async def caller(self) -> tuple[Caller, events_service_pb2_grpc.EventsServiceAsyncStub]:
        jobs = grpc.aio.insecure_channel(f"127.0.0.1:{self.jobs_port}")
        events = grpc.aio.insecure_channel(f"127.0.0.1:{self.events_port}")
        self.channels += [jobs, events]
        for channel in (jobs, events):
            await asyncio.wait_for(channel.channel_ready(), 30)
        stub: events_service_pb2_grpc.EventsServiceAsyncStub
        stub = events_service_pb2_grpc.EventsServiceStub(events)
        return Caller(jobs_service_pb2_grpc.JobsServiceStub(jobs), DEV_TOKEN), stub


@pytest.fixture
async def world(settings: Settings, postgres_admin_url: str) -> AsyncIterator[World]:
    storage = Path(tempfile.mkdtemp(prefix="darkroom-metrics-storage-"))
    log_dir = Path(tempfile.mkdtemp(prefix="darkroom-metrics-logs-"))
    # A database of its own: its reconciler would otherwise enqueue other tests' queued
    # jobs of the same models, and its generators run them.
    name = f"darkroom_metrics_{uuid.uuid4().hex[:12]}"
    url = create_database(postgres_admin_url, name)
    await asyncio.to_thread(db.migrate, url)
    world = World(
        settings.model_copy(
            update={"key_prefix": f"{settings.key_prefix}-metrics", "database_url": url}
        ),
        devservers.free_port(),
        devservers.free_port(),
        storage,
        log_dir,
    )
    yield world
    for channel in world.channels:
        await channel.close()
    for process in world.processes.values():
        if process.process.returncode is None:
            process.process.send_signal(signal.SIGTERM)
    for process in world.processes.values():
        try:
            await asyncio.wait_for(process.process.wait(), 10)
        except TimeoutError:
            process.process.kill()
            await process.process.wait()
    shutil.rmtree(storage, ignore_errors=True)
    drop_database(postgres_admin_url, name)
