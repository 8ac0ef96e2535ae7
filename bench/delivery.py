"""3. Event delivery: generator append → client receipt over WatchJob, against a raw
XREAD BLOCK client on the same stream, at a fixed rate. Each event carries its send time."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from typing import Any

import grpc
import redis.asyncio

from bench.context import Context
from bench.env import AUTH
from bench.load import open_loop
from bench.procs import stop
from bench.stack import start_events
from bench.stats import Figure, Goal, Section, percentile
from darkroom import db, events, queue
from darkroom.config import DEV_OWNER
from darkroom.events import EventLog, JobEvent
from darkroom.store import JobStore
from darkroom.v1 import events_service_pb2, events_service_pb2_grpc, job_pb2, jobs_service_pb2
from darkroom.validation import validate_submit

SPEC = job_pb2.JobSpec(prompt="delivery", width=64, height=64, steps=1)
SETTLE_S = 2.0


class Sender:
    """Appends progress events stamped with the moment they are sent."""

    def __init__(self, log: EventLog, job_id: str, total: int) -> None:
        self.log, self.job_id, self.total, self.step = log, job_id, total, 0

    async def send(self) -> None:
        self.step += 1
        event = events.progress(self.job_id, 1, self.step, self.total)
        event.time.FromNanoseconds(time.time_ns())
        await self.log.append(event)


def _latency(event: JobEvent, latencies: list[float]) -> None:
    if event.WhichOneof("kind") == "progress":
        latencies.append((time.time_ns() - event.time.ToNanoseconds()) / 1e9)


async def _watch(call: Any, latencies: list[float]) -> None:
    while isinstance(response := await call.read(), events_service_pb2.WatchJobResponse):
        _latency(response.event, latencies)


async def _xread(event_log: EventLog, job_id: str, cursor: str, latencies: list[float]) -> None:
    while True:
        entries = await event_log.wait(job_id, cursor, block_s=1)
        cursor = entries[-1][0] if entries else cursor
        for _, event in entries:
            _latency(event, latencies)


async def _measure(
    ctx: Context, sender: Sender, reader: Any, latencies: list[float]
) -> dict[str, Any]:
    """Send the events at the set rate while `reader` collects them; then let it drain."""
    options = ctx.options
    task = asyncio.create_task(reader)
    try:
        sent = await open_loop(sender.send, options.event_rate, options.events / options.event_rate)
        deadline = time.monotonic() + SETTLE_S
        # Bounded by the deadline; the reader has no signal of its own to wait on.
        while len(latencies) < sent.ok and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.01)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, grpc.aio.AioRpcError):
            await task
    return {
        "sent": sent.ok,
        "send_errors": sent.errors,
        "received": len(latencies),
        "p50_ms": percentile(latencies, 50) * 1000,
        "p90_ms": percentile(latencies, 90) * 1000,
        "p99_ms": percentile(latencies, 99) * 1000,
        "max_ms": max(latencies, default=float("nan")) * 1000,
    }


async def run(ctx: Context) -> Section:
    section = Section("delivery", "3. Event delivery")
    options = ctx.options
    settings = ctx.env.settings("delivery")
    child, port = await start_events(ctx.env, settings, ctx.log_dir)
    engine = db.create_engine(settings.database_url, pool_size=1)
    writer = queue.connect(settings)
    reader = redis.asyncio.Redis.from_url(settings.redis_url)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        job = validate_submit(
            jobs_service_pb2.SubmitJobRequest(request_id=str(uuid.uuid4()), spec=SPEC), settings
        )
        row, _ = await JobStore(engine).create(DEV_OWNER, job, settings.max_attempts)
        job_id, reading = str(row.id), EventLog(reader, settings.key_prefix)
        sender = Sender(EventLog(writer, settings.key_prefix), job_id, 2 * options.events + 10)
        for _ in range(10):  # warm both connections, and give the stream a first entry
            await sender.send()

        stub = events_service_pb2_grpc.EventsServiceStub(channel)
        call = stub.WatchJob(
            events_service_pb2.WatchJobRequest(job_id=job_id), metadata=AUTH, timeout=600
        )
        first = await call.read()
        if not isinstance(first, events_service_pb2.WatchJobResponse):
            raise RuntimeError(f"WatchJob ended at once: {first}")
        ctx.say(f"delivery: {options.events} events at {options.event_rate:g}/s over WatchJob")
        grpc_latencies: list[float] = []
        ours = await _measure(ctx, sender, _watch(call, grpc_latencies), grpc_latencies)
        call.cancel()

        ctx.say(f"delivery: {options.events} events at {options.event_rate:g}/s, raw XREAD")
        newest = await reading.last(job_id)
        if newest is None:
            raise RuntimeError("the warm-up events are missing")
        raw_latencies: list[float] = []
        raw = _xread(reading, job_id, newest[0], raw_latencies)
        base = await _measure(ctx, sender, raw, raw_latencies)
    finally:
        await channel.close()
        await reader.aclose()
        await writer.aclose()
        await writer.connection_pool.disconnect()
        await engine.dispose()
        await stop(child)
    label = "a raw XREAD BLOCK client on the same stream"
    details = {"ours": ours, "baseline": base}
    rate = f"{options.event_rate:g}/s"
    section.figures += [
        Figure(
            "delivery",
            f"append → receipt p50 at {rate}",
            "ms",
            ours["p50_ms"],
            base["p50_ms"],
            label,
            goals=[Goal("p50 <= 5 ms", 5.0)],
            details=details,
        ),
        Figure(
            "delivery",
            f"append → receipt p99 at {rate}",
            "ms",
            ours["p99_ms"],
            base["p99_ms"],
            label,
            goals=[Goal("p99 <= 25 ms", 25.0)],
        ),
        Figure(
            "delivery",
            "events received / sent",
            "",
            ours["received"] / max(ours["sent"], 1),
            base["received"] / max(base["sent"], 1),
            label,
            note="below 1 over WatchJob means the watcher fell more than 16 events behind "
            "and coalesced progress events (by design)",
        ),
    ]
    section.notes.append(
        "`python -m darkroom.services.events` in its own process; the appender "
        "(`EventLog.append`, as the generator calls it) and both clients run in the bench "
        "process. Each progress event carries its send time in `JobEvent.time`."
    )
    return section
