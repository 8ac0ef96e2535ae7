"""6. Recovery: from SIGKILL of a busy generator to its job RUNNING again (attempt 2) on a
second generator, with the reconciler requeueing the expired lease. Baseline: arq alone,
whose in-progress key blocks a rerun for its job timeout + 10 s (computed, not measured)."""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import timedelta

from bench.context import Context
from bench.procs import ROOT, Child, spawn, stop
from bench.stats import Figure, Goal, Section
from darkroom import db, events, queue
from darkroom.config import DEV_OWNER, Settings
from darkroom.events import EventLog
from darkroom.models import JobRow, State
from darkroom.store import JobStore
from darkroom.v1 import job_pb2, jobs_service_pb2
from darkroom.validation import validate_submit

STEP_MS = 50
SPEC = job_pb2.JobSpec(prompt="recovery", width=64, height=64, steps=150)
RECONCILER = ROOT / "services" / "reconciler" / "__main__.py"
START_TIMEOUT_S = 120
POLL_S = 0.02


def arq_rerun_seconds(settings: Settings) -> float:
    """When arq alone would rerun a killed job: the worker's arq job_timeout (as
    darkroom.services.generator.worker sets it) + arq's 10 s in-progress margin."""
    job_timeout = int((settings.job_timeout + settings.lease * 4).total_seconds()) + 60
    return job_timeout + 10.0


async def _generator(ctx: Context, settings: Settings, name: str) -> Child:
    return await spawn(
        name,
        ["-m", "tests.fake_generator", f"step_ms={STEP_MS}"],
        ctx.env.child_env(
            settings,
            DARKROOM_WORKER_ID=name,
            DARKROOM_SHUTDOWN_GRACE="1",
        ),
        ctx.log_dir,
    )


async def _until(
    store: JobStore, job_id: uuid.UUID, attempt: int, limit_s: float, watched: list[Child]
) -> JobRow | None:
    """Poll the row until it is RUNNING at `attempt`; None after `limit_s` seconds."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        row = await store.get_any(job_id)
        if row is not None and row.state == State.RUNNING and row.attempt == attempt:
            return row
        for child in watched:
            if child.process.returncode is not None:
                raise RuntimeError(f"{child.name} exited:\n{child.tail()}")
        await asyncio.sleep(POLL_S)
    return None


async def run(ctx: Context) -> Section:
    section = Section("recovery", "6. Recovery")
    quick = ctx.options.quick
    # --quick shortens the lease and the reconcile interval: a smoke test, not the figure.
    changes = (
        {
            "lease": timedelta(seconds=3),
            "heartbeat_interval": timedelta(seconds=1),
            "reconcile_interval": timedelta(seconds=1),
        }
        if quick
        else {}
    )
    settings = ctx.env.settings("recovery", **changes)
    baseline = arq_rerun_seconds(settings)
    label = (
        f"arq alone: job_timeout {baseline - 10:g} s (as the generator configures arq) + 10 s "
        "before the in-progress key lets the job run again; computed, not measured"
    )
    figure = Figure(
        "recovery",
        "SIGKILL of a busy generator → job RUNNING again (attempt 2)",
        "s",
        None,
        baseline,
        label,
        goals=[] if quick else [Goal("<= 30 s", 30.0)],
        note="--quick: lease 3 s, reconcile interval 1 s; the goal is judged on full runs"
        if quick
        else "",
    )
    section.figures.append(figure)
    if not RECONCILER.exists():
        section.skipped = "reconciler missing (services/reconciler/__main__.py)"
        figure.note = "not measured: reconciler missing"
        return section

    engine = db.create_engine(settings.database_url, pool_size=2)
    writer = queue.connect(settings)
    store = JobStore(engine)
    children: list[Child] = []
    try:
        first = await _generator(ctx, settings, "generator-1")
        children.append(first)
        job = validate_submit(
            jobs_service_pb2.SubmitJobRequest(request_id=str(uuid.uuid4()), spec=SPEC), settings
        )
        row, _ = await store.create(DEV_OWNER, job, settings.max_attempts)
        await EventLog(writer, settings.key_prefix).append(events.queued(row.id, row.attempt))
        await queue.JobQueue(writer, settings).enqueue(
            row.id, row.attempt, row.model, owner=row.owner
        )
        ctx.say(f"recovery: waiting for generator-1 (pid {first.pid}) to run the job")
        if await _until(store, row.id, 1, START_TIMEOUT_S, [first]) is None:
            raise TimeoutError("generator-1 did not start the job")
        await asyncio.sleep(1.0)  # mid-job, after a few heartbeats
        ctx.say("recovery: SIGKILL generator-1; starting generator-2 and the reconciler")
        killed = time.monotonic()
        first.process.kill()
        await first.process.wait()
        second = await _generator(ctx, settings, "generator-2")
        children.append(second)
        reconciler = await spawn(
            "reconciler",
            ["-m", "darkroom.services.reconciler"],
            ctx.env.child_env(settings),
            ctx.log_dir,
        )
        children.append(reconciler)
        timeout = ctx.options.recovery_timeout
        again = await _until(store, row.id, 2, timeout, [second, reconciler])
        if again is None:
            figure.note = f"not running again within {timeout:g} s"
        else:
            figure.ours = time.monotonic() - killed
            figure.details = {"worker_id": again.worker_id, "lease_s": settings.lease.seconds}
    finally:
        for child in reversed(children):
            await stop(child, grace=15)
        await writer.aclose()
        await writer.connection_pool.disconnect()
        await engine.dispose()
    section.notes.append(
        f"generator processes on the fake pipeline (`tests.fake_generator step_ms={STEP_MS}`) "
        "(150 steps); after the SIGKILL a second generator and "
        "`python -m darkroom.services.reconciler` start; the "
        f"job's row is polled every {POLL_S * 1000:g} ms. Lease "
        f"{settings.lease.total_seconds():g} s, reconcile interval {_interval(settings)}"
        f"{' (--quick)' if quick else ' (the defaults)'}: the figure is about lease + interval "
        "+ a generator start."
    )
    return section


def _interval(settings: Settings) -> str:
    value = getattr(settings, "reconcile_interval", None)
    return f"{value.total_seconds():g} s" if value is not None else "its default"
