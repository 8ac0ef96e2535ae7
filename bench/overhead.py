"""5. Generator overhead: per-job wall time through the whole system (SubmitJob → the
`succeeded` event, a generator process on the tiny diffusers model) against a bare loop
calling the same pipeline's generate() on one dedicated thread in a process of its own.

Both sides stay loaded and take turns image by image (a bare image, then a job), so that
the machine's speed, which drifts by tens of percent within a minute here, hits both
alike; each job shape gets its own figures, because a job's fixed cost (submit, pickup,
PNG, storage, commits, events) weighs more the shorter the job.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import redis.asyncio

from bench.bare_loop import GUIDANCE, PROMPT, SEED, WARMUP
from bench.context import Context
from bench.cpu import CpuMeter, describe
from bench.env import AUTH
from bench.procs import ROOT, Child, spawn, stop
from bench.stack import start_jobs
from bench.stats import Figure, Goal, Section, percentile
from darkroom import db
from darkroom.config import Settings
from darkroom.events import START, TERMINAL_KINDS, EventLog
from darkroom.store import JobStore
from darkroom.v1 import job_pb2, jobs_service_pb2, jobs_service_pb2_grpc

WARMUP_JOBS = 2
START_TIMEOUT_S = 300
LABEL = (
    "bare generate() loop on one dedicated thread, same model, size and steps, in its own "
    "process, taking turns with the system image by image (the services frozen while it "
    "runs); median image"
)


async def _python(*args: str, limit_s: float) -> str:
    """Run `python ARGS` in the repository root; its stdout (raises on failure)."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        *args,
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        stdout, stderr = await asyncio.wait_for(process.communicate(), limit_s)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    if process.returncode != 0:
        raise RuntimeError(f"python {' '.join(args)} failed:\n{stderr.decode()[-2000:]}")
    return stdout.decode()


class BareLoop:
    """`python -m bench.bare_loop MODEL`, kept loaded, asked for images line by line."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process

    @classmethod
    async def start(cls, model_dir: str, log_path: Path) -> BareLoop:
        with log_path.open("wb") as log_file:
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "bench.bare_loop",
                model_dir,
                cwd=ROOT,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=log_file,
            )
        loop = cls(process)
        await loop._answer(START_TIMEOUT_S)
        return loop

    async def _answer(self, limit_s: float) -> dict[str, Any]:
        assert self.process.stdout is not None
        line = await asyncio.wait_for(self.process.stdout.readline(), limit_s)
        if not line:
            raise RuntimeError("the bare loop ended early (see bare_loop.log)")
        answer: dict[str, Any] = json.loads(line)
        return answer

    async def images(self, size: int, steps: int, count: int) -> list[float]:
        assert self.process.stdin is not None
        self.process.stdin.write(f"{size} {steps} {count}\n".encode())
        await self.process.stdin.drain()
        seconds: list[float] = (await self._answer(600))["seconds"]
        return seconds

    async def close(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()
        try:
            await asyncio.wait_for(self.process.wait(), 30)
        except TimeoutError:
            self.process.kill()
            await self.process.wait()


class Client:
    """Submits jobs and waits for their terminal events."""

    def __init__(self, settings: Settings, port: int) -> None:
        self.settings = settings
        self.channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        self.stub = jobs_service_pb2_grpc.JobsServiceStub(self.channel)
        self.redis = redis.asyncio.Redis.from_url(settings.redis_url)

    async def submit(self, size: int, steps: int) -> str:
        spec = job_pb2.JobSpec(
            prompt=PROMPT,
            width=size,
            height=size,
            steps=steps,
            guidance_scale=GUIDANCE,
            seed=SEED,
        )
        request = jobs_service_pb2.SubmitJobRequest(request_id=str(uuid.uuid4()), spec=spec)
        response = await self.stub.SubmitJob(request, metadata=AUTH, timeout=10)
        return str(response.job.id)

    async def finished(self, job_id: str, limit_s: float) -> float:
        """Wait for the job's terminal event; the perf_counter time it was read."""
        event_log, cursor = EventLog(self.redis, self.settings.key_prefix), START
        deadline = time.monotonic() + limit_s
        while time.monotonic() < deadline:
            entries = await event_log.wait(job_id, cursor, block_s=1)
            cursor = entries[-1][0] if entries else cursor
            for _, event in entries:
                kind = event.WhichOneof("kind")
                if kind == "succeeded":
                    return time.perf_counter()
                if kind in TERMINAL_KINDS:
                    raise RuntimeError(f"job {job_id} ended {kind}")
        raise TimeoutError(f"job {job_id} did not finish in {limit_s:g} s")

    async def close(self) -> None:
        await self.channel.close()
        await self.redis.aclose()


async def _breakdown(settings: Settings, job_ids: list[str]) -> dict[str, float]:
    """Median queue wait and run time (claim → SUCCEEDED commit) of jobs, from their rows."""
    engine = db.create_engine(settings.database_url, pool_size=1)
    store = JobStore(engine)
    waits, runs = [], []
    for job_id in job_ids:
        row = await store.get_any(uuid.UUID(job_id))
        if row and row.started_at and row.completed_at:
            waits.append((row.started_at - row.created_at).total_seconds())
            runs.append((row.completed_at - row.started_at).total_seconds())
    await engine.dispose()
    return {
        "queue_wait_p50_ms": percentile(waits, 50) * 1000,
        "run_p50_ms": percentile(runs, 50) * 1000,
    }


@contextlib.contextmanager
def paused(pids: list[int]) -> Iterator[None]:
    """SIGSTOP the processes `pids` for the duration, SIGCONT them after."""
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGCONT)


async def _shape(
    ctx: Context,
    client: Client,
    bare_loop: BareLoop,
    shape: tuple[int, int],
    pids: dict[int, str],
) -> list[Figure]:
    size, steps = shape
    service_pids = [pid for pid, name in pids.items() if pid != os.getpid()]
    n = ctx.options.overhead_jobs
    ctx.say(f"overhead: {size}x{size}, {steps} steps: warm-up")
    for _ in range(WARMUP_JOBS):
        await client.finished(await client.submit(size, steps), START_TIMEOUT_S)
    bare: list[float] = []
    sequential: list[float] = []
    sequential_ids: list[str] = []
    meter = CpuMeter(pids)
    cpu: dict[str, float] = {}
    ctx.say(f"overhead: {n} bare images and {n} jobs one at a time, taking turns")
    for _ in range(n):
        # The services are frozen meanwhile: even idle, a poll loop beside a CPU pipeline
        # slows it (a preempted thread holds up the whole parallel op), and the bare loop
        # must not pay for the system's neighbours. It waits on its stdin in turn.
        with paused(service_pids):
            bare += await bare_loop.images(size, steps, 1)
        began = time.perf_counter()
        job_id = await client.submit(size, steps)
        sequential.append(await client.finished(job_id, 120 + steps) - began)
        sequential_ids.append(job_id)
    ctx.say(f"overhead: {n} jobs submitted at once")
    meter.start()
    began = time.perf_counter()
    backlog_ids = [await client.submit(size, steps) for _ in range(n)]
    done = [await client.finished(job_id, 120 + 10 * n * steps) for job_id in backlog_ids]
    cpu = meter.stop()
    backlog_per_job = (max(done) - began) / n
    breakdown = await _breakdown(client.settings, sequential_ids)
    bare_p50, ours_p50 = percentile(bare, 50), percentile(sequential, 50)
    name = f"{size}x{size}, {steps} steps"
    details: dict[str, Any] = {
        "bare_s": bare,
        "sequential_s": sequential,
        "backlog_per_job_s": backlog_per_job,
        **breakdown,
        "cpu_cores_backlog": cpu,
    }
    return [
        Figure(
            "overhead",
            f"per job, {name}, one at a time (submit → succeeded event), median",
            "s",
            ours_p50,
            bare_p50,
            LABEL,
            goals=[Goal("<= 3% overhead", 1.03, on_ratio=True)],
            note=(
                f"fixed cost {1000 * (ours_p50 - bare_p50):.0f} ms a job; from the rows: "
                f"queue wait {breakdown['queue_wait_p50_ms']:.1f} ms, claim → SUCCEEDED "
                f"{breakdown['run_p50_ms']:.0f} ms (medians); CPU while the backlog ran: "
                f"{describe(cpu)}"
            ),
            details=details,
        ),
        Figure(
            "overhead",
            f"per job, {name}, {n} submitted at once (wall time / {n})",
            "s",
            backlog_per_job,
            bare_p50,
            LABEL,
            goals=[Goal("<= 3% overhead", 1.03, on_ratio=True)],
        ),
    ]


async def run(ctx: Context) -> Section:
    section = Section("overhead", "5. Generator overhead")
    model_dir = ctx.env.workdir / "tiny-sd"
    ctx.say("overhead: building the tiny model")
    await _python(
        "-m", "darkroom.services.generator.tiny_model", str(model_dir), limit_s=START_TIMEOUT_S
    )
    settings = ctx.env.settings(
        "overhead", generator_model_path=str(model_dir), generator_device="cpu"
    )
    bare_loop = await BareLoop.start(str(model_dir), ctx.log_dir / "bare_loop.log")
    jobs, port = await start_jobs(ctx.env, settings, ctx.log_dir)
    generator: Child = await spawn(
        "generator",
        ["-m", "darkroom.services.generator"],
        ctx.env.child_env(
            settings,
            DARKROOM_GENERATOR_MODEL_PATH=str(model_dir),
            DARKROOM_GENERATOR_DEVICE="cpu",
            DARKROOM_WORKER_ID="bench-overhead",
        ),
        ctx.log_dir,
    )
    client = Client(settings, port)
    pids = {generator.pid: "generator", jobs.pid: "Jobs server", os.getpid(): "bench"}
    try:
        for shape in ctx.options.overhead_shapes:
            section.figures += await _shape(ctx, client, bare_loop, shape, pids)
    finally:
        await client.close()
        await stop(generator, grace=30)
        await stop(jobs)
        await bare_loop.close()
    section.notes.append(
        "Tiny random Stable Diffusion (`darkroom.services.generator.tiny_model`), guidance "
        f"{GUIDANCE}, CPU float32. System: `python -m darkroom.services.jobs` and `python -m "
        "darkroom.services.generator` processes; each job is timed from just before SubmitJob to "
        "the moment its `succeeded` event is read from the job's stream. The bare loop is "
        f"`python -m bench.bare_loop`, after {WARMUP} warm-up images per shape; both sides "
        "take turns image by image. A "
        "job's fixed cost is its median minus the bare median."
    )
    return section
