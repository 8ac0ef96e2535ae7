"""10. Closed loop: N clients, each submitting through the Python client, watching the job
to its end and fetching the PNG, again and again, for a window; against section 5's bare
generate() loop run about as long (the services frozen) before and after it. Then batched
against unbatched generators, the same loop, by turns."""

from __future__ import annotations

import asyncio
import json
import math
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from bench import profiling
from bench.bare_loop import GUIDANCE, PROMPT, SEED
from bench.context import Context
from bench.cpu import process_seconds
from bench.overhead import START_TIMEOUT_S, BareLoop, _python, paused
from bench.procs import Child, spawn, stop
from bench.profiling import OTHERS, PIPELINE
from bench.stack import start_events, start_jobs
from bench.stats import Figure, Goal, Section, mean, percentile
from darkroom.config import DEV_TOKEN, Settings
from darkroom_client import AsyncDarkroomClient
from darkroom_client.errors import DarkroomError, JobEnded

SECTION, MODEL, BATCHED = "closed_loop", "tiny-sd", "tiny-sd-batched"
# The goals; other shapes are measured without one.
GOALS = {(128, 20): 0.90, (512, 30): 0.95}
# Completions closer than this belong to one burst (a batch's jobs end together).
BURST_S = 0.01
# A window (and a bare run) lasts at least this many images (a slow or busy machine).
MIN_JOBS = 12
BATCH_MAX, BATCH_WAIT = 4, "0.005"
NOTES = (
    "`AsyncDarkroomClient`s in the bench's process, each looping generate() (SubmitJob, "
    "WatchJob to the end, the PNG read from its file:// URL), against `python -m "
    "darkroom.services.{jobs,events,reconciler,generator}` on the tiny model, after one job "
    "each to warm up. jobs/s: the jobs done after the window's first, from its end to the "
    "last's. CPU per job: each process's CPU over the window / (jobs/s x window); Postgres "
    "and Redis are the whole shared servers; torch's intra-op threads count as pipeline "
    "work. In-pipeline time: the generator's `attempt_succeeded` `generate_ms`. py-spy "
    "profiles (`--profile`) perturb the figures of the window they sample."
)
INSIDE = "the bare loop's median image, before and after the window"
CPU = "the bare loop's CPU seconds per image (all its threads); ours: every Darkroom process"
BARE = (
    "bare generate() loop back to back on one thread, same model and shape, in its own "
    "process, the Darkroom processes frozen: images/s before and after the window, their mean"
)


def steady(finished: list[float], burst_s: float = BURST_S) -> tuple[int, float]:
    """Steady-state completions and the seconds they took: those after the first burst,
    from its end to the last completion (so no partly run job counts at either end)."""
    ordered = sorted(finished)
    first = 1
    while first < len(ordered) and ordered[first] - ordered[first - 1] <= burst_s:
        first += 1
    return len(ordered) - first, ordered[-1] - ordered[first - 1] if ordered else 0.0


def jobs_per_second(runs: list[Run]) -> float:
    """Steady-state jobs per second over `runs`, pooled."""
    pairs = [steady(run.finished) for run in runs]
    span = sum(seconds for _, seconds in pairs)
    return sum(count for count, _ in pairs) / span if span > 0 else math.nan


@dataclass
class Run:
    """What the clients of one window did: each job's wall time and when it ended."""

    walls: list[float] = field(default_factory=list)
    finished: list[float] = field(default_factory=list)
    job_ids: set[str] = field(default_factory=set)
    late: list[float] = field(default_factory=list)  # walls of jobs done after the window
    errors: Counter[str] = field(default_factory=Counter)

    @property
    def rate(self) -> float:
        return jobs_per_second([self])


def _module(service: str) -> list[str]:
    return ["-m", f"darkroom.services.{service}"]


@dataclass
class Stack:
    """Jobs, Events, reconciler and generators (by model), and a client per loop."""

    settings: Settings
    children: dict[str, Child]
    clients: list[AsyncDarkroomClient]

    async def generator(self, ctx: Context, key: str, model: str, **env: str) -> Child:
        """Start `python -m darkroom.services.generator` serving `model`, as `key`."""
        env |= {"DARKROOM_GENERATOR_MODEL": model, "DARKROOM_WORKER_ID": f"bench-{key}"}
        env = ctx.env.child_env(self.settings, **env)
        self.children[key] = await spawn(key, _module("generator"), env, ctx.log_dir)
        return self.children[key]

    async def close(self) -> None:
        for client in self.clients:
            await client.close()
        for child in self.children.values():
            await stop(child, grace=30)


async def loop(stack: Stack, shape: tuple[int, int], model: str, seconds: float) -> Run:
    """Every client: generate(), again and again, until `seconds` have passed; only the
    jobs done by then count (those in flight finish, uncounted)."""
    size, steps = shape
    spec: dict[str, Any] = {"width": size, "height": size, "steps": steps, "model": model}
    run, until = Run(), time.perf_counter() + seconds

    async def client_loop(client: AsyncDarkroomClient) -> None:
        while True:  # at least one job each: `seconds=0` is a warm-up
            began = time.perf_counter()
            try:
                result = await client.generate(
                    PROMPT, guidance_scale=GUIDANCE, seed=SEED, timeout=60, **spec
                )
            except (DarkroomError, JobEnded) as exc:
                run.errors[f"{type(exc).__name__}: {str(exc)[-120:]}"] += 1
                result = None
            if (done := time.perf_counter()) > until:
                run.late += [done - began] if result is not None else []
                return
            if result is None:
                continue
            run.walls.append(done - began)
            run.finished.append(done)
            run.job_ids.add(result.job.id)

    await asyncio.gather(*(client_loop(client) for client in stack.clients))
    return run


async def _start(ctx: Context, model_dir: str) -> Stack:
    settings = ctx.env.settings(
        "closed-loop",
        generator_model_path=model_dir,
        generator_device="cpu",
        models=[MODEL, BATCHED],
        log_level="INFO",
    )
    jobs, jobs_port = await start_jobs(ctx.env, settings, ctx.log_dir)
    events, events_port = await start_events(ctx.env, settings, ctx.log_dir)
    children = {"jobs": jobs, "events": events}
    env = ctx.env.child_env(settings)
    children["reconciler"] = await spawn("reconciler", _module("reconciler"), env, ctx.log_dir)
    clients = [
        AsyncDarkroomClient(f"127.0.0.1:{jobs_port}", f"127.0.0.1:{events_port}", token=DEV_TOKEN)
        for _ in range(ctx.options.closed_loop_clients)
    ]
    stack = Stack(settings, children, clients)
    await stack.generator(ctx, "generator", MODEL)
    return stack


async def _bare(
    stack: Stack, bare: BareLoop, shape: tuple[int, int], seconds: float
) -> list[float]:
    """Bare images back to back, the services frozen, for `seconds` (one image at least)."""
    times: list[float] = []
    with paused([child.pid for child in stack.children.values()]):
        while not times or sum(times) < seconds:
            times += await bare.images(*shape, max(1, round(1 / times[-1])) if times else 1)
    return times


async def _shape(
    ctx: Context, stack: Stack, bare: BareLoop, shape: tuple[int, int], profile: bool
) -> list[Figure]:
    size, steps = shape
    name, n = f"{size}x{size}, {steps} steps", len(stack.clients)
    ctx.say(f"closed loop: {name}: warm-up")
    if (warm := await loop(stack, shape, MODEL, 0.0)).errors:  # one job per client
        raise RuntimeError(f"warm-up jobs failed: {dict(warm.errors)}")
    estimate = await _bare(stack, bare, shape, 0)  # it warms up on its first call of a shape
    slowest = max(warm.late, default=0.0) / len(stack.clients)  # N jobs queued at once
    window = max(ctx.options.closed_loop_window_s, MIN_JOBS * max(estimate[0], slowest))
    ctx.say(f"closed loop: {name}: {window:g} s bare, {window:g} s of {n} clients, again bare")
    began = process_seconds(bare.process.pid)
    before = await _bare(stack, bare, shape, window)
    pids = {key: child.pid for key, child in stack.children.items()} | {"bench": os.getpid()}
    watch = await profiling.Watch.start(pids, ctx.options.out / "profile", profile)
    run_task = asyncio.create_task(loop(stack, shape, MODEL, window))
    await asyncio.sleep(window)
    cpu, written = await watch.stop()
    run = await run_task
    after = await _bare(stack, bare, shape, window)
    bare_cpu = (process_seconds(bare.process.pid) - began) / len(before + after)
    generated = profiling.generate_seconds(stack.children["generator"].tail(10**9), run.job_ids)
    rates = [len(before) / sum(before), len(after) / sum(after)]
    bare_rate = mean(rates)
    jobs_done = run.rate * window  # the CPU of the window over the jobs it is worth
    per_job = {label: seconds / jobs_done for label, seconds in sorted(cpu.items())}
    outside = sum(s for label, s in per_job.items() if label not in {PIPELINE, OTHERS})
    limit = GOALS.get(shape)
    goal = [Goal(f">= {limit:.2f}x bare", limit, at_most=False, on_ratio=True)] if limit else []
    details = {"run": {"walls_s": run.walls, "errors": dict(run.errors)}, "bare_before_s": before}
    details |= {"bare_after_s": after, "cpu_s_per_job": per_job, "generate_s": generated}
    details["pipeline_threads_cpu_s"] = watch.ledger.by_thread
    busy = sum(seconds > 0.01 * window for seconds in watch.ledger.by_thread.values())
    breakdown = ", ".join(f"{label} {1000 * s:.1f}" for label, s in per_job.items())
    ideal = f"{n} x the bare loop's seconds per image (computed): each job waits for the rest"
    walls = (percentile(run.walls, 50), n / bare_rate)
    p99 = f"p99 {percentile(run.walls, 99):.2f} s"
    note = f"bare {rates[0]:.2f}/s before, {rates[1]:.2f}/s after; "
    note += f"{len(run.walls)} jobs done in the {window:.0f} s window"
    note += f", errors {dict(run.errors)}" if run.errors else ""
    note += f"; other processes used {cpu.get(OTHERS, 0) / window:.2f} cores meanwhile"
    note += f"; profiles: {', '.join(map(str, written))}" if written else ""
    first = {"goals": goal, "note": note, "details": details}
    cpu_note = f"ms per job: {breakdown}; generator threads: {watch.how}, {busy} of them busy"
    inside = (percentile(generated, 50), percentile(before + after, 50))
    cpu_pair = (outside, bare_cpu)
    return [
        _fig(f"jobs/s, {name}", "/s", (run.rate, bare_rate), BARE, **first),
        _fig(f"wall per job (submit → PNG in hand), {name}, p50", "s", walls, ideal, note=p99),
        _fig(f"time inside the pipeline (generate_ms), {name}, median", "s", inside, INSIDE),
        _fig(f"CPU per job outside the pipeline, {name}", "s", cpu_pair, CPU, note=cpu_note),
    ]


def _fig(name: str, unit: str, values: tuple[float, float], label: str, **more: Any) -> Figure:
    """A figure of this section: `values` are ours and the baseline."""
    return Figure(SECTION, name, unit, *values, label, **more)


async def _batched(ctx: Context, stack: Stack) -> str:
    """Start a second generator, batching; why not, when it cannot be (else "")."""
    if not {"batch_sizes", "batch_wait"} <= set(Settings.model_fields):
        return "skipped: batching setting not available"
    batching = {"DARKROOM_BATCH_SIZES": json.dumps({BATCHED: BATCH_MAX})}
    batching["DARKROOM_BATCH_WAIT"] = BATCH_WAIT
    child = await stack.generator(ctx, "generator-batched", BATCHED, **batching)
    warm = asyncio.ensure_future(loop(stack, ctx.options.batch_shapes[0], BATCHED, 0.0))
    died = asyncio.ensure_future(child.process.wait())
    await asyncio.wait({warm, died}, timeout=START_TIMEOUT_S, return_when="FIRST_COMPLETED")
    if warm.done():
        died.cancel()
        errors = warm.result().errors
        return f"skipped: batched jobs failed: {dict(errors)}" if errors else ""
    warm.cancel()
    return f"skipped: the batching generator did not start: {child.tail(300)!r}"


async def _batching(ctx: Context, stack: Stack) -> list[Figure]:
    """images/s through a batching generator against an unbatched one, by turns."""
    window, figures = ctx.options.batch_window_s, []
    ctx.say(f"closed loop: batched (at most {BATCH_MAX}, {BATCH_WAIT} s wait) against unbatched")
    skipped = await _batched(ctx, stack)
    sides = {"unbatched": (MODEL, "generator-batched"), "batched": (BATCHED, "generator")}
    for size, steps in ctx.options.batch_shapes:
        ctx.say(f"closed loop: batched against unbatched, {size}x{size}, {steps} steps")
        runs: dict[str, list[Run]] = {side: [] for side in sides}
        order, seconds = list(sides), window
        for turn in range(0 if skipped else 3):  # a warm-up turn, then each side first once
            for side in order if turn % 2 else order[::-1]:
                model, other = sides[side]
                with paused([stack.children[other].pid]):
                    run = await loop(stack, (size, steps), model, seconds if turn else 0.0)
                runs[side] += [run] if turn else []
                # The warm-up's N jobs took its longest wall: a side gets MIN_JOBS at least.
                late = max(run.late, default=0.0) if not turn else 0.0
                seconds = max(seconds, MIN_JOBS / len(stack.clients) * late)

        label = "the same loop through an unbatched generator, by turns (the other frozen), "
        label += f"{seconds:.0f} s a side twice, each side first once"
        values = (jobs_per_second(runs["batched"]), jobs_per_second(runs["unbatched"]))
        note = skipped or f"{sum(len(r.walls) for r in runs['batched'])} batched jobs"
        name = f"images/s batched (<= {BATCH_MAX}), {size}x{size}, {steps} steps"
        walls = {side: [r.walls for r in rs] for side, rs in runs.items()}
        figures.append(_fig(name, "/s", values, label, note=note, details=walls))
    return figures


async def run(ctx: Context) -> Section:
    section = Section("closed_loop", "10. Closed loop")
    model_dir = ctx.env.workdir / "tiny-sd"
    if not model_dir.exists():
        ctx.say("closed loop: building the tiny model")
        await _python(
            "-m", "darkroom.services.generator.tiny_model", str(model_dir), limit_s=START_TIMEOUT_S
        )
    profile = ctx.options.profile and profiling.py_spy() is not None
    if ctx.options.profile and not profile:
        section.notes.append("--profile: no py-spy (`pip install py-spy`), so no profiles.")
    bare = await BareLoop.start(str(model_dir), ctx.log_dir / "bare_loop.log")
    stack = await _start(ctx, str(model_dir))
    try:
        for number, shape in enumerate(ctx.options.closed_loop_shapes):
            section.figures += await _shape(ctx, stack, bare, shape, profile and number == 0)
        section.figures += await _batching(ctx, stack)
    finally:
        await stack.close()
        await bare.close()
    section.notes.append(f"{len(stack.clients)} {NOTES}")
    if profile:
        section.notes.append(f"Profiles of the first shape's window: {ctx.options.out}/profile/.")
    return section
