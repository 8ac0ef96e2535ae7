"""1. Submit: accepted SubmitJobs per second through the Jobs server, against the same
INSERT + COMMIT + arq enqueue done directly by an asyncio loop with no gRPC."""

from __future__ import annotations

import dataclasses
import itertools
import os
import uuid

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bench.context import Context
from bench.cpu import CpuMeter, describe
from bench.env import AUTH
from bench.load import LoadResult, closed_loop, open_loop
from bench.procs import stop
from bench.stack import start_jobs
from bench.stats import Figure, Goal, Section
from darkroom import db, queue
from darkroom.config import DEV_OWNER, Settings
from darkroom.store import JobStore
from darkroom.v1 import job_pb2, jobs_service_pb2, jobs_service_pb2_grpc
from darkroom.validation import validate_submit

SPEC = job_pb2.JobSpec(prompt="a lighthouse at dusk", width=64, height=64, steps=1)
WARMUP_SECONDS = 1.0
BASELINE = "direct JobStore.create + JobQueue.enqueue, same load, no gRPC"


class Submitters:
    """The two ways to accept a job: SubmitJob over gRPC, and the direct baseline."""

    def __init__(self, settings: Settings, port: int, channels: int) -> None:
        self.settings = settings
        # A local subchannel pool gives each channel a connection of its own.
        options = [("grpc.use_local_subchannel_pool", 1)]
        self.channels = [
            grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=options) for _ in range(channels)
        ]
        self.stubs = [jobs_service_pb2_grpc.JobsServiceStub(c) for c in self.channels]
        self.health = [health_pb2_grpc.HealthStub(c) for c in self.channels]
        self.counter = itertools.count()
        self.engine = db.create_engine(settings.database_url, settings.database_pool_size)
        self.redis = queue.connect(settings)
        self.store = JobStore(self.engine)
        self.queue = queue.JobQueue(self.redis, settings)
        self.template = validate_submit(
            jobs_service_pb2.SubmitJobRequest(request_id=str(uuid.uuid4()), spec=SPEC), settings
        )

    async def through_grpc(self) -> None:
        stub = self.stubs[next(self.counter) % len(self.stubs)]
        request = jobs_service_pb2.SubmitJobRequest(request_id=str(uuid.uuid4()), spec=SPEC)
        response = await stub.SubmitJob(request, metadata=AUTH, timeout=10)
        if response.replayed:
            raise RuntimeError("a fresh request_id was replayed")

    async def noop(self) -> None:
        """The cheapest call the same server answers: what gRPC alone costs here."""
        stub = self.health[next(self.counter) % len(self.health)]
        await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=10)

    async def direct(self) -> None:
        job = dataclasses.replace(self.template, request_id=uuid.uuid4())
        row, created = await self.store.create(DEV_OWNER, job, self.settings.max_attempts)
        if not created:
            raise RuntimeError("a fresh request_id was replayed")
        await self.queue.enqueue(row.id, row.attempt, row.model, owner=row.owner)

    async def close(self) -> None:
        for channel in self.channels:
            await channel.close()
        await self.redis.aclose()
        await self.redis.connection_pool.disconnect()
        await self.engine.dispose()


async def _saturation(
    ctx: Context, submitters: Submitters, server_pid: int
) -> tuple[list[Figure], str]:
    ours_op, base_op = submitters.through_grpc, submitters.direct
    n, seconds = ctx.options.concurrency, ctx.options.saturation_seconds
    ctx.say(f"submit: saturation, {n} in flight for {seconds:g} s")
    meter = CpuMeter({server_pid: "Jobs server", os.getpid(): "bench (client)"})
    meter.start()
    ours = await closed_loop(ours_op, n, seconds)
    ours_cpu = meter.stop()
    meter.labels[os.getpid()] = "bench (baseline loop)"
    meter.start()
    base = await closed_loop(base_op, n, seconds)
    base_cpu = meter.stop()
    meter.labels[os.getpid()] = "bench (client)"
    meter.start()
    noop = await closed_loop(submitters.noop, n, seconds)
    noop_cpu = meter.stop()
    figures = [
        Figure(
            "submit",
            f"accepted submits/s at saturation ({n} in flight)",
            "/s",
            ours.throughput,
            base.throughput,
            BASELINE,
            goals=[
                Goal(">= 2,000 accepted/s on 2 cores", 2000, at_most=False),
                Goal(">= 50% of baseline", 0.5, at_most=False, on_ratio=True),
            ],
            details={
                "ours": ours.as_dict(),
                "baseline": base.as_dict(),
                "cpu_cores_ours": ours_cpu,
                "cpu_cores_baseline": base_cpu,
            },
        ),
        Figure(
            "submit",
            f"accepted submits/s against no-op calls/s on the same server ({n} in flight)",
            "/s",
            ours.throughput,
            noop.throughput,
            "Health.Check through the same Jobs server and client: gRPC's own ceiling here",
            details={"noop": noop.as_dict(), "cpu_cores_noop": noop_cpu},
        ),
        Figure(
            "submit",
            f"p99 latency at saturation ({n} in flight)",
            "ms",
            ours.as_dict()["p99_ms"],
            base.as_dict()["p99_ms"],
            BASELINE,
        ),
    ]
    note = (
        f"CPU at saturation through gRPC: {describe(ours_cpu)}. Baseline: "
        f"{describe(base_cpu)}. No-op calls: {describe(noop_cpu)}."
    )
    return figures, note


def _rate_figures(rate: int, ours: LoadResult, base: LoadResult) -> list[Figure]:
    o, b = ours.as_dict(), base.as_dict()
    p99_goals = [Goal("p99 <= 15 ms at 500/s", 15.0)] if rate == 500 else []
    return [
        Figure(
            "submit",
            f"accepted/s at {rate}/s offered",
            "/s",
            ours.throughput,
            base.throughput,
            BASELINE,
            details={"ours": o, "baseline": b},
        ),
        Figure("submit", f"p50 latency at {rate}/s", "ms", o["p50_ms"], b["p50_ms"], BASELINE),
        Figure(
            "submit",
            f"p99 latency at {rate}/s",
            "ms",
            o["p99_ms"],
            b["p99_ms"],
            BASELINE,
            goals=p99_goals,
        ),
    ]


async def run(ctx: Context) -> Section:
    section = Section("submit", "1. Submit")
    options = ctx.options
    settings = ctx.env.settings("submit")
    child, port = await start_jobs(ctx.env, settings, ctx.log_dir)
    submitters = Submitters(settings, port, options.channels)
    try:
        ctx.say(f"submit: warming up (Jobs server pid {child.pid})")
        await closed_loop(submitters.through_grpc, options.concurrency, WARMUP_SECONDS)
        await closed_loop(submitters.direct, options.concurrency, WARMUP_SECONDS)
        for rate in options.rates:
            ctx.say(f"submit: {rate}/s offered for {options.rate_seconds:g} s")
            ours = await open_loop(submitters.through_grpc, rate, options.rate_seconds)
            base = await open_loop(submitters.direct, rate, options.rate_seconds)
            section.figures += _rate_figures(rate, ours, base)
        figures, cpu_note = await _saturation(ctx, submitters, child.pid)
        section.figures += figures
    finally:
        await submitters.close()
        await stop(child)
    section.notes += [
        f"Jobs server: `python -m darkroom.services.jobs` in its own process (INFO JSON logs to a "
        f"file); client: grpc.aio on uvloop over {options.channels} channels in the bench "
        "process. Each SubmitJob also validates, authenticates, appends the `queued` event "
        "(XADD, EXPIRE, PUBLISH) and logs a line, which the baseline does not; under load "
        "the server writes concurrent submits in batches (one INSERT, one Redis round "
        "trip), which the baseline, one job at a time, cannot. Open-loop latency counts "
        "from each request's scheduled send time. The no-op row is the same client calling "
        "Health.Check on the same server: the most calls per second gRPC itself allows here.",
        cpu_note,
    ]
    return section
