"""2. Pickup: enqueue → claim latency of an idle worker, woken by the enqueue, against the
same worker polling as plain arq does (every 0.5 s, its default, no wake-ups), timed by the
`started` event the worker publishes."""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from datetime import timedelta

import redis.asyncio

from bench import fairness
from bench.context import Context
from bench.stats import Figure, Goal, Section, mean, percentile
from darkroom import db, queue
from darkroom.config import DEV_OWNER, Settings
from darkroom.events import START, TERMINAL_KINDS, EventLog
from darkroom.services.generator.pipeline import FakePipeline
from darkroom.services.generator.worker import start
from darkroom.store import JobStore
from darkroom.v1 import job_pb2, jobs_service_pb2
from darkroom.validation import validate_submit

SPEC = job_pb2.JobSpec(prompt="pickup", width=64, height=64, steps=1)
WAIT_MS = 10_000


async def _samples(settings: Settings, count: int) -> list[float]:
    """Pickup latencies (seconds) of `count` jobs given one at a time to an idle worker."""
    engine = db.create_engine(settings.database_url, pool_size=2)
    arq_redis = queue.connect(settings)
    reader = redis.asyncio.Redis.from_url(settings.redis_url)
    store, jobs_queue = JobStore(engine), queue.JobQueue(arq_redis, settings)
    generator = await start(settings, FakePipeline(step_seconds=0))
    poll = settings.worker_poll_delay.total_seconds()
    latencies: list[float] = []
    try:
        for index in range(count + 1):  # the first one warms up connections
            job = validate_submit(
                jobs_service_pb2.SubmitJobRequest(request_id=str(uuid.uuid4()), spec=SPEC),
                settings,
            )
            row, _ = await store.create(DEV_OWNER, job, settings.max_attempts)
            # Enqueue at a random moment of the worker's polling cycle.
            await asyncio.sleep(random.uniform(0, poll) + 0.002)  # noqa: S311 - not cryptography
            sent_ns = time.time_ns()
            await jobs_queue.enqueue(row.id, row.attempt, row.model, owner=row.owner)
            started_ns = await _wait_events(EventLog(reader, settings.key_prefix), row.id)
            if index:
                latencies.append((started_ns - sent_ns) / 1e9)
    finally:
        await generator.stop(timedelta(seconds=5))
        await reader.aclose()
        await arq_redis.aclose()
        await arq_redis.connection_pool.disconnect()
        await engine.dispose()
    return latencies


async def _wait_events(event_log: EventLog, job_id: uuid.UUID) -> int:
    """Read the job's stream until its terminal event; the `started` event's time (ns)."""
    cursor, started_ns = START, 0
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        entries = await event_log.wait(job_id, cursor, block_s=WAIT_MS / 1000)
        cursor = entries[-1][0] if entries else cursor
        for _, event in entries:
            kind = event.WhichOneof("kind")
            if kind == "started":
                started_ns = event.time.ToNanoseconds()
            elif kind in TERMINAL_KINDS:
                if not started_ns:
                    raise RuntimeError(f"job ended without starting: {event}")
                return started_ns
    raise TimeoutError(f"no terminal event for job {job_id}")


async def run(ctx: Context) -> Section:
    section = Section("pickup", "2. Pickup")
    ours_settings = ctx.env.settings("pickup", worker_id="bench-pickup")
    arq_settings = ctx.env.settings(
        "pickup-arq",
        worker_id="bench-pickup-arq",
        worker_wakeups=False,
        worker_poll_delay=timedelta(seconds=0.5),
    )
    how = (
        "woken by the enqueue"
        if ours_settings.worker_wakeups
        else f"poll {ours_settings.worker_poll_delay.total_seconds() * 1000:g} ms"
    )
    ctx.say(f"pickup: {ctx.options.pickup_samples} jobs, {how}")
    ours = await _samples(ours_settings, ctx.options.pickup_samples)
    ctx.say(f"pickup: {ctx.options.pickup_arq_samples} jobs, arq's default poll delay 0.5 s")
    base = await _samples(arq_settings, ctx.options.pickup_arq_samples)
    label = "the same worker polling as plain arq: poll_delay 0.5 s (its default), no wake-ups"
    details = {
        "ours_ms": [round(s * 1000, 3) for s in ours],
        "baseline_ms": [round(s * 1000, 3) for s in base],
        "ours_mean_ms": mean(ours) * 1000,
        "baseline_mean_ms": mean(base) * 1000,
    }
    section.figures += [
        Figure(
            "pickup",
            f"enqueue → started, p50 ({how})",
            "ms",
            percentile(ours, 50) * 1000,
            percentile(base, 50) * 1000,
            label,
            goals=[Goal("p50 <= 10 ms", 10.0)],
            details=details,
        ),
        Figure(
            "pickup",
            f"enqueue → started, p99 ({how})",
            "ms",
            percentile(ours, 99) * 1000,
            percentile(base, 99) * 1000,
            label,
        ),
    ]
    await _deep(ctx, section, ours)
    section.notes.append(
        "In-process `darkroom.services.generator.worker.start` with "
        "`FakePipeline(step_seconds=0)`, one job at a time (enqueued directly with "
        "`JobQueue.enqueue`, at a random point of the 0.5 s poll cycle). Latency: from just "
        "before the enqueue to the `time` of the `started` event the worker publishes right "
        "after its claim commits."
    )
    return section


async def _deep(ctx: Context, section: Section, empty: list[float]) -> None:
    """The fair queue at depth: its take against the FIFO take it replaced, an idle
    worker's pickup beside a backlog, and the cost of a queue position."""
    backlog = 10_000 if ctx.options.quick else 100_000
    takes = 100 if ctx.options.quick else 300
    owners = f"{backlog:,} queued across {fairness.OWNERS:,} owners"
    fair_settings = ctx.env.settings("pickup-fair")
    ctx.say(f"pickup: filling the fair queue, {owners}")
    made = await fairness.fill(fair_settings, backlog)
    position = await fairness.positions(fair_settings, made, takes)
    snapshot = await fairness.snapshot_seconds(fair_settings)
    fair = await fairness.fair_takes(fair_settings, takes)
    ctx.say(f"pickup: the FIFO take with {backlog:,} queued in one set")
    fifo = await fairness.fifo_takes(ctx.env.settings("pickup-fifo"), backlog, takes)
    # An idle worker: the backlog is all backing off (due in an hour), a new job comes in.
    deep_settings = ctx.env.settings("pickup-deep", worker_id="bench-pickup-deep")
    ctx.say(f"pickup: an idle worker beside {owners}, all backing off")
    await fairness.fill(deep_settings, backlog, delay=timedelta(hours=1))
    deep = await _samples(deep_settings, ctx.options.pickup_samples)
    section.figures += [
        Figure(
            "pickup",
            f"take script round trip, p50 ({owners})",
            "ms",
            percentile(fair, 50) * 1000,
            percentile(fifo, 50) * 1000,
            f"the FIFO take script it replaced, {backlog:,} queued in one set",
            details={"fair_ms": [round(t * 1000, 3) for t in fair]},
        ),
        Figure(
            "pickup",
            f"enqueue → started, p50, idle worker beside {owners}",
            "ms",
            percentile(deep, 50) * 1000,
            percentile(empty, 50) * 1000,
            "the same worker with an empty queue (the first figure)",
            goals=[Goal("p50 <= 10 ms", 10.0)],
            details={"deep_ms": [round(t * 1000, 3) for t in deep]},
        ),
        Figure(
            "pickup",
            f"queue position of a queued job, p50 ({owners})",
            "ms",
            percentile(position, 50) * 1000,
            percentile(fair, 50) * 1000,
            "one take at the same depth",
            details={"snapshot_ms": round(snapshot * 1000, 3)},
        ),
    ]
    section.notes.append(
        f"Fair queue at depth: {owners} (fake job ids, no rows). The take is timed by "
        "`Consumer._take` alone (one script), each followed by its finish; the baseline "
        "runs the FIFO script this project used before fair share "
        "(`bench.fairness.FIFO_TAKE_SCRIPT`) on a set of the same size. A position is "
        "`QueueView.status`: the job's rank in its owner's line (a sorted set) and a sum "
        "over the owners of a snapshot of the round, read once a second "
        f"(one read: {snapshot * 1000:.1f} ms here). The idle-worker pickup is the first "
        "figure's measurement with the whole backlog backing off beside it."
    )
