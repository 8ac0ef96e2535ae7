"""4. Watchers: N concurrent WatchJob streams on one Events process (`python -m
darkroom.services.events`): its resident memory, its Redis connections, and the delivery of one
event published to every watched job. Baseline: the same process, idle."""

from __future__ import annotations

import asyncio
import json
import math
import time
import uuid
from typing import Any

import redis.asyncio

from bench.context import Context
from bench.procs import Child, rss_bytes, spawn, stop
from bench.stack import start_events
from bench.stats import Figure, Goal, Section, percentile
from darkroom import db, events, queue
from darkroom.config import DEV_OWNER, Settings
from darkroom.events import EventLog
from darkroom.store import JobStore
from darkroom.v1 import job_pb2, jobs_service_pb2
from darkroom.validation import validate_submit

SPEC = job_pb2.JobSpec(prompt="watch me", width=64, height=64, steps=1)
MIB = 1024 * 1024
CREATE_CONCURRENCY = 16
PUBLISH_CONCURRENCY = 16


async def _create_jobs(settings: Settings, count: int) -> list[str]:
    """QUEUED jobs with their `queued` event logged, as SubmitJob leaves them.

    (A job without a log is followed through its row once a second per watcher.)
    """
    engine = db.create_engine(settings.database_url, pool_size=CREATE_CONCURRENCY)
    writer = queue.connect(settings)
    store, log = JobStore(engine), EventLog(writer, settings.key_prefix)
    ids: list[str] = []

    async def create(n: int) -> None:
        for _ in range(n):
            job = validate_submit(
                jobs_service_pb2.SubmitJobRequest(request_id=str(uuid.uuid4()), spec=SPEC),
                settings,
            )
            row, _ = await store.create(DEV_OWNER, job, settings.max_attempts)
            await log.append(events.queued(row.id, row.attempt))
            ids.append(str(row.id))

    share = math.ceil(count / CREATE_CONCURRENCY)
    await asyncio.gather(
        *(create(min(share, count - i * share)) for i in range(CREATE_CONCURRENCY))
    )
    await writer.aclose()
    await writer.connection_pool.disconnect()
    await engine.dispose()
    return ids


async def _connections(client: redis.asyncio.Redis, pid: int) -> int:
    clients = await client.client_list()
    return sum(1 for c in clients if c.get("name") == f"darkroom-events-{pid}")


async def _line(child: Child, limit_s: float) -> dict[str, Any]:
    """The next JSON line a watch client prints."""
    stdout = child.process.stdout
    assert stdout is not None
    raw = await asyncio.wait_for(stdout.readline(), limit_s)
    if not raw:
        raise RuntimeError(f"{child.name} exited early:\n{child.tail()}")
    message: dict[str, Any] = json.loads(raw)
    return message


async def _start_client(
    ctx: Context, index: int, port: int, job_ids: list[str], limit_s: float
) -> Child:
    plan = ctx.log_dir / f"watch-client-{index}.json"
    plan.write_text(
        json.dumps(
            {
                "port": port,
                "job_ids": job_ids,
                "channels": ctx.options.watch_channels,
                "deadline_s": limit_s * 3,
                "receive_timeout_s": limit_s,
            }
        )
    )
    return await spawn(
        f"watch-client-{index}",
        ["-m", "bench.watch_client", str(plan)],
        ctx.env.child_env(ctx.env.settings("watchers")),
        ctx.log_dir,
        stdout_pipe=True,
    )


async def _publish(settings: Settings, job_ids: list[str]) -> float:
    """One progress event to every job, stamped as sent; returns the seconds it took."""
    writer = queue.connect(settings)
    log = EventLog(writer, settings.key_prefix)
    pending = list(job_ids)

    async def publish() -> None:
        while pending:
            event = events.progress(pending.pop(), 1, 1, 1)
            event.time.FromNanoseconds(time.time_ns())
            await log.append(event)

    began = time.monotonic()
    try:
        await asyncio.gather(*(publish() for _ in range(PUBLISH_CONCURRENCY)))
    finally:
        await writer.aclose()
        await writer.connection_pool.disconnect()
    return time.monotonic() - began


async def _measure(ctx: Context, settings: Settings, job_ids: list[str]) -> dict[str, Any]:
    """Start the Events process and the watchers, publish, and collect what happened."""
    n, clients = ctx.options.watchers, ctx.options.watch_clients
    events_child, port = await start_events(ctx.env, settings, ctx.log_dir)
    inspector = redis.asyncio.Redis.from_url(settings.redis_url)
    watch_clients: list[Child] = []
    limit_s = max(120.0, n / 50)
    found: dict[str, Any] = {"events_pid": events_child.pid, "jobs": len(job_ids)}
    try:
        await asyncio.sleep(1.0)  # let start-up allocations settle
        found["rss_idle"] = rss_bytes(events_child.pid)
        found["connections_idle"] = await _connections(inspector, events_child.pid)
        ctx.say(f"watchers: opening {n} WatchJob streams from {clients} processes")
        began = time.monotonic()
        for index in range(clients):
            mine = [job_ids[i % len(job_ids)] for i in range(index, n, clients)]
            watch_clients.append(await _start_client(ctx, index, port, mine, limit_s))
        ready = await asyncio.gather(*(_line(c, limit_s * 2) for c in watch_clients))
        found["open_seconds"] = time.monotonic() - began
        found["open"] = sum(message["ready"] for message in ready)
        found["open_failures"] = [message["failed"] for message in ready]
        found["rss_open"] = rss_bytes(events_child.pid)
        found["connections"] = await _connections(inspector, events_child.pid)
        ctx.say(
            f"watchers: {found['open']} open in {found['open_seconds']:.1f} s, RSS "
            f"{found['rss_open'] / MIB:.0f} MiB; one event to each of {len(job_ids)} jobs"
        )
        found["publish_seconds"] = await _publish(settings, job_ids)
        results = await asyncio.gather(*(_line(c, limit_s * 2) for c in watch_clients))
        found["rss_delivered"] = rss_bytes(events_child.pid)
        found["connections"] = max(
            found["connections"], await _connections(inspector, events_child.pid)
        )
    finally:
        for child in watch_clients:
            await stop(child, grace=10)
        await inspector.aclose()
        await stop(events_child, grace=20)
    found["latencies"] = [value for message in results for value in message["latencies"]]
    found["missing"] = sum(message["missing"] for message in results)
    return found


async def run(ctx: Context) -> Section:
    section = Section("watchers", "4. Watchers")
    options = ctx.options
    settings = ctx.env.settings("watchers")
    job_count = math.ceil(options.watchers / options.watchers_per_job)
    ctx.say(f"watchers: creating {job_count} jobs")
    found = await _measure(ctx, settings, await _create_jobs(settings, job_count))
    latencies: list[float] = found.pop("latencies")
    opened = found["open"]
    rss, idle_rss = max(found["rss_open"], found["rss_delivered"]), found["rss_idle"]
    details = {
        **{k: v for k, v in found.items() if not k.startswith("rss")},
        "rss_idle_mib": idle_rss / MIB,
        "rss_with_watchers_mib": found["rss_open"] / MIB,
        "rss_after_delivery_mib": found["rss_delivered"] / MIB,
        "rss_per_watcher_kib": (rss - idle_rss) / max(opened, 1) / 1024,
        "delivered": len(latencies),
    }
    idle = "the same process, idle, before the watchers connect"
    none = "none (section 3 has a single watcher)"
    section.figures += [
        Figure(
            "watchers",
            f"Events process RSS with {opened:,} watchers",
            "MiB",
            rss / MIB,
            idle_rss / MIB,
            idle,
            goals=[Goal("<= 1 GiB", 1024.0)],
            details=details,
        ),
        Figure(
            "watchers",
            f"Redis connections of the Events process with {opened:,} watchers",
            "connections",
            float(found["connections"]),
            float(found["connections_idle"]),
            idle,
            goals=[Goal("<= 4", 4.0)],
        ),
        Figure(
            "watchers",
            f"delivery p50, one event to each of {job_count:,} jobs",
            "ms",
            percentile(latencies, 50) * 1000,
            None,
            none,
        ),
        Figure(
            "watchers",
            f"delivery p99, one event to each of {job_count:,} jobs",
            "ms",
            percentile(latencies, 99) * 1000,
            None,
            none,
            note=f"{len(latencies):,} of {opened:,} watchers got their event; publishing "
            f"took {found['publish_seconds']:.2f} s",
        ),
    ]
    section.notes.append(
        f"{opened:,} streams ({options.watchers_per_job} per job) from "
        f"{options.watch_clients} client processes x {options.watch_channels} channels "
        f"each, opened in {found['open_seconds']:.1f} s, on `python -m darkroom.services.events` "
        f"(pid {found['events_pid']}). Memory is VmRSS from /proc/<pid>/status; connections "
        "are CLIENT LIST entries named darkroom-events-<pid>. The events go out from "
        f"{PUBLISH_CONCURRENCY} concurrent `EventLog.append` loops; latency runs from each "
        "event's own send time to its receipt in a client process, so it includes the "
        "clients' own CPU time on the same machine."
    )
    return section
