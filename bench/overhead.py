"""5. Generator overhead: per-job wall time through the whole system (SubmitJob → the
terminal event, a generator process on the tiny diffusers model) against a bare loop
calling the same pipeline's generate() on one dedicated thread in a process of its own."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
import uuid
from typing import Any

import grpc
import redis.asyncio

from bench.bare_loop import GUIDANCE, PROMPT, SEED, WARMUP
from bench.context import Context
from bench.cpu import CpuMeter, describe
from bench.env import AUTH
from bench.procs import ROOT, Child, spawn, stop
from bench.stack import start_jobs
from bench.stats import Figure, Goal, Section, mean, percentile
from darkroom import db, events
from darkroom.config import Settings
from darkroom.events import EVENT_FIELD, TERMINAL_KINDS, JobEvent
from darkroom.store import JobStore
from darkroom.v1 import job_pb2, jobs_service_pb2, jobs_service_pb2_grpc

WARMUP_JOBS = 2
START_TIMEOUT_S = 300


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


class Client:
    """Submits jobs and waits for their terminal events."""

    def __init__(self, settings: Settings, port: int) -> None:
        self.settings = settings
        self.channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        self.stub = jobs_service_pb2_grpc.JobsServiceStub(self.channel)
        self.redis = redis.asyncio.Redis.from_url(settings.redis_url)

    async def submit(self) -> str:
        spec = job_pb2.JobSpec(
            prompt=PROMPT,
            width=self.settings.default_width,
            height=self.settings.default_height,
            steps=self.settings.default_steps,
            guidance_scale=GUIDANCE,
            seed=SEED,
        )
        request = jobs_service_pb2.SubmitJobRequest(request_id=str(uuid.uuid4()), spec=spec)
        response = await self.stub.SubmitJob(request, metadata=AUTH, timeout=10)
        return str(response.job.id)

    async def finished(self, job_id: str, limit_s: float) -> float:
        """Wait for the job's terminal event; the perf_counter time it was read."""
        key, cursor = events.stream_key(self.settings.key_prefix, job_id), "0-0"
        deadline = time.monotonic() + limit_s
        while time.monotonic() < deadline:
            answer = await self.redis.xread({key: cursor}, block=1000, count=100)
            for _, entries in answer:
                for entry_id, fields in entries:
                    cursor = entry_id
                    kind = JobEvent.FromString(fields[EVENT_FIELD]).WhichOneof("kind")
                    if kind == "succeeded":
                        return time.perf_counter()
                    if kind in TERMINAL_KINDS:
                        raise RuntimeError(f"job {job_id} ended {kind}")
        raise TimeoutError(f"job {job_id} did not finish in {limit_s:g} s")

    async def close(self) -> None:
        await self.channel.close()
        await self.redis.aclose()


async def _bare(ctx: Context, model: str, size: int, steps: int, n: int) -> list[float]:
    ctx.say(f"overhead: bare loop, {n} images of {size}x{size}, {steps} steps")
    out = await _python("-m", "bench.bare_loop", model, str(size), str(steps), str(n), limit_s=600)
    seconds: list[float] = json.loads(out.strip().splitlines()[-1])["seconds"]
    return seconds


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


async def run(ctx: Context) -> Section:
    section = Section("overhead", "5. Generator overhead")
    options = ctx.options
    size, steps, n = options.image_size, options.image_steps, options.overhead_jobs
    model_dir = ctx.env.workdir / "tiny-sd"
    ctx.say("overhead: building the tiny model")
    await _python("-m", "services.generator.tiny_model", str(model_dir), limit_s=START_TIMEOUT_S)
    bare = await _bare(ctx, str(model_dir), size, steps, n)

    settings = ctx.env.settings(
        "overhead",
        generator_model_path=str(model_dir),
        generator_device="cpu",
        default_width=size,
        default_height=size,
        default_steps=steps,
    )
    jobs, port = await start_jobs(ctx.env, settings, ctx.log_dir)
    generator: Child = await spawn(
        "generator",
        ["-m", "services.generator"],
        ctx.env.child_env(
            settings,
            DARKROOM_GENERATOR_MODEL_PATH=str(model_dir),
            DARKROOM_GENERATOR_DEVICE="cpu",
            DARKROOM_WORKER_ID="bench-overhead",
        ),
        ctx.log_dir,
    )
    client = Client(settings, port)
    try:
        ctx.say("overhead: waiting for the generator (warm-up jobs)")
        for _ in range(WARMUP_JOBS):
            await client.finished(await client.submit(), START_TIMEOUT_S)
        ctx.say(f"overhead: {n} jobs one at a time")
        meter = CpuMeter(
            {generator.pid: "generator", jobs.pid: "Jobs server", os.getpid(): "bench"}
        )
        meter.start()
        sequential: list[float] = []
        sequential_ids = []
        for _ in range(n):
            began = time.perf_counter()
            job_id = await client.submit()
            sequential.append(await client.finished(job_id, 120) - began)
            sequential_ids.append(job_id)
        cpu = meter.stop()
        ctx.say(f"overhead: {n} jobs submitted at once")
        began = time.perf_counter()
        backlog_ids = [await client.submit() for _ in range(n)]
        done = [await client.finished(job_id, 120 + 10 * n) for job_id in backlog_ids]
        backlog_per_job = (max(done) - began) / n
        breakdown = await _breakdown(settings, sequential_ids)
    finally:
        await client.close()
        await stop(generator, grace=30)
        await stop(jobs)
    # Bracket the system run with the bare loop, so a noisy phase hits both alike.
    bare += await _bare(ctx, str(model_dir), size, steps, n)
    bare_p50 = percentile(bare, 50)
    details: dict[str, Any] = {
        "bare_s": bare,
        "sequential_s": sequential,
        "backlog_per_job_s": backlog_per_job,
        "sequential_mean_s": mean(sequential),
        "bare_mean_s": mean(bare),
        **breakdown,
        "cpu_cores_one_at_a_time": cpu,
    }
    label = (
        "bare generate() loop on one dedicated thread, same model, size and steps "
        "(median image, run before and after the system)"
    )
    section.figures += [
        Figure(
            "overhead",
            "per job, one at a time (submit → succeeded event), median",
            "s",
            percentile(sequential, 50),
            bare_p50,
            label,
            goals=[Goal("<= 3% overhead", 1.03, on_ratio=True)],
            details=details,
        ),
        Figure(
            "overhead",
            f"per job, {n} submitted at once (wall time / {n})",
            "s",
            backlog_per_job,
            bare_p50,
            label,
            goals=[Goal("<= 3% overhead", 1.03, on_ratio=True)],
        ),
    ]
    section.notes.append(
        f"Tiny random Stable Diffusion (`services.generator.tiny_model`), {size}x{size}, "
        f"{steps} steps, guidance {GUIDANCE}, CPU float32. System: `python -m services.jobs` "
        "and `python -m services.generator` processes; each job is timed from just before "
        "SubmitJob to the moment its `succeeded` event is read from the job's stream. "
        f"From the rows (one at a time): queue wait {breakdown['queue_wait_p50_ms']:.1f} ms, "
        f"claim → SUCCEEDED {breakdown['run_p50_ms']:.1f} ms (medians). The bare loop is "
        "`python -m bench.bare_loop` in its own process, after "
        f"{WARMUP} warm-up images. CPU while jobs ran one at a time: {describe(cpu)}."
    )
    return section
