"""7. Gateway: event delivery over server-sent events through the HTTP gateway against
WatchJob direct on the same stream (same run), and the gateway's memory per open stream."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from typing import Any

import grpc
import httpx
from google.protobuf import timestamp_pb2

from bench.context import Context
from bench.delivery import SPEC, Sender, _measure, _watch
from bench.env import AUTH
from bench.procs import Child, rss_bytes, spawn, stop, wait_until
from bench.stack import start_events
from bench.stats import Figure, Goal, Section
from darkroom import db, devservers, queue
from darkroom.config import DEV_OWNER, DEV_TOKEN
from darkroom.events import EventLog
from darkroom.store import JobStore
from darkroom.v1 import events_service_pb2, events_service_pb2_grpc, jobs_service_pb2
from darkroom.validation import validate_submit

STREAMS, QUICK_STREAMS = 1000, 200
BEARER = {"Authorization": f"Bearer {DEV_TOKEN}"}


async def _start_gateway(ctx: Context, settings: Any, events_port: int) -> tuple[Child, int]:
    port = devservers.free_port()
    target = f"127.0.0.1:{events_port}"
    child = await spawn(
        "gateway",
        ["-m", "darkroom.services.gateway"],
        ctx.env.child_env(
            settings,
            DARKROOM_GATEWAY_ADDRESS=f"127.0.0.1:{port}",
            DARKROOM_GATEWAY_EVENTS_TARGET=target,
            DARKROOM_GATEWAY_JOBS_TARGET=target,  # unused: streams only watch
            DARKROOM_GATEWAY_SESSION_SECRET="bench",  # noqa: S106 - no session is used
        ),
        ctx.log_dir,
    )

    async def serving() -> bool:
        async with httpx.AsyncClient(timeout=1) as http:
            try:
                return (await http.get(f"http://127.0.0.1:{port}/healthz")).status_code == 200
            except httpx.TransportError:
                return False

    await wait_until(serving, child, 60, f"gateway on port {port}")
    return child, port


def _sent_at(data: str) -> int | None:
    event = json.loads(data)
    if "progress" not in event:
        return None
    stamp = timestamp_pb2.Timestamp()
    stamp.FromJsonString(event["time"])
    return stamp.ToNanoseconds()


async def _sse(response: httpx.Response, latencies: list[float]) -> None:
    async for line in response.aiter_lines():
        if line.startswith("data: "):
            sent = _sent_at(line[6:])
            if sent is not None:
                latencies.append((time.time_ns() - sent) / 1e9)


async def _open_streams(
    http: httpx.AsyncClient, path: str, count: int, stack: contextlib.AsyncExitStack
) -> None:
    """Open `count` streams and read each one's first event (so each is really open)."""

    async def one() -> None:
        response = await stack.enter_async_context(http.stream("GET", path))
        if response.status_code != 200:
            raise RuntimeError(f"stream answered {response.status_code}")
        lines = response.aiter_lines()
        async for line in lines:
            if line.startswith("data: "):
                return

    for start in range(0, count, 100):  # a burst of 100 at a time
        await asyncio.gather(*(one() for _ in range(start, min(start + 100, count))))


async def _memory(
    http: httpx.AsyncClient, path: str, streams: int, pid: int
) -> tuple[int, int, float]:
    """The gateway's RSS before and with `streams` open streams, and how long they took."""
    async with contextlib.AsyncExitStack() as warm:
        await _open_streams(http, path, 10, warm)  # imports and pools warmed
    await asyncio.sleep(0.5)
    before = rss_bytes(pid)
    async with contextlib.AsyncExitStack() as open_streams:
        opened = time.monotonic()
        await _open_streams(http, path, streams, open_streams)
        open_s = time.monotonic() - opened
        await asyncio.sleep(0.5)
        after = rss_bytes(pid)
    return before, after, open_s


async def run(ctx: Context) -> Section:
    section = Section("gateway", "7. Gateway")
    options = ctx.options
    settings = ctx.env.settings("gateway")
    streams = QUICK_STREAMS if options.quick else STREAMS
    events_child, events_port = await start_events(ctx.env, settings, ctx.log_dir)
    gateway_child, gateway_port = await _start_gateway(ctx, settings, events_port)
    engine = db.create_engine(settings.database_url, pool_size=1)
    writer = queue.connect(settings)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{events_port}")
    limits = httpx.Limits(max_connections=streams + 10, max_keepalive_connections=0)
    http = httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{gateway_port}", headers=BEARER, timeout=60, limits=limits
    )
    try:
        job = validate_submit(
            jobs_service_pb2.SubmitJobRequest(request_id=str(uuid.uuid4()), spec=SPEC), settings
        )
        row, _ = await JobStore(engine).create(DEV_OWNER, job, settings.max_attempts)
        job_id = str(row.id)
        sender = Sender(EventLog(writer, settings.key_prefix), job_id, 2 * options.events + 10)
        for _ in range(10):
            await sender.send()
        path = f"/v1/jobs/{job_id}/events"

        ctx.say(f"gateway: {options.events} events at {options.event_rate:g}/s over SSE")
        sse_latencies: list[float] = []
        async with http.stream("GET", path) as response:
            ours = await _measure(ctx, sender, _sse(response, sse_latencies), sse_latencies)

        ctx.say(f"gateway: {options.events} events at {options.event_rate:g}/s, WatchJob direct")
        stub = events_service_pb2_grpc.EventsServiceStub(channel)
        call = stub.WatchJob(
            events_service_pb2.WatchJobRequest(job_id=job_id), metadata=AUTH, timeout=600
        )
        await call.read()
        grpc_latencies: list[float] = []
        base = await _measure(ctx, sender, _watch(call, grpc_latencies), grpc_latencies)
        call.cancel()

        ctx.say(f"gateway: memory with {streams} open SSE streams")
        memory = await _memory(http, path, streams, gateway_child.pid)
    finally:
        await http.aclose()
        await channel.close()
        await writer.aclose()
        await writer.connection_pool.disconnect()
        await engine.dispose()
        await stop(gateway_child)
        await stop(events_child)
    section.figures += _figures(options.event_rate, streams, ours, base, memory)
    section.notes.append(
        "`python -m darkroom.services.gateway` and `python -m darkroom.services.events` in "
        "processes of their own; the appender and both readers run in the bench process. "
        "Memory is the gateway's RSS before and after opening the streams (each has read "
        "its first event), divided by their number."
    )
    return section


def _figures(
    event_rate: float,
    streams: int,
    ours: dict[str, Any],
    base: dict[str, Any],
    memory: tuple[int, int, float],
) -> list[Figure]:
    before, after, open_s = memory
    rate = f"{event_rate:g}/s"
    per_stream_kib = (after - before) / streams / 1024
    label = "WatchJob direct on the same stream (same run)"
    return [
        Figure(
            "gateway",
            f"append → SSE receipt p50 at {rate}",
            "ms",
            ours["p50_ms"],
            base["p50_ms"],
            label,
            goals=[Goal("p50 <= 10 ms", 10.0)],
            details={"ours": ours, "baseline": base},
        ),
        Figure(
            "gateway",
            f"append → SSE receipt p99 at {rate}",
            "ms",
            ours["p99_ms"],
            base["p99_ms"],
            label,
        ),
        Figure(
            "gateway",
            "events received / sent",
            "",
            ours["received"] / max(ours["sent"], 1),
            base["received"] / max(base["sent"], 1),
            label,
        ),
        Figure(
            "gateway",
            f"gateway memory per open SSE stream ({streams} streams)",
            "KiB",
            per_stream_kib,
            None,
            "none (an absolute figure)",
            goals=[Goal("<= 64 KiB a stream", 64.0)],
            details={
                "rss_before_mib": before / 2**20,
                "rss_after_mib": after / 2**20,
                "open_s": open_s,
            },
        ),
    ]
