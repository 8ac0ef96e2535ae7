"""8. Observability: what metrics and traces cost, each measured on against off in the
same run.

Two stacks side by side, alike but for `DARKROOM_METRICS_ADDRESS` and
`DARKROOM_TRACES_ENDPOINT` (every trace recorded, exported over OTLP to a collector that
keeps nothing, `bench.otlp_sink`), with /metrics scraped every second as a busy Prometheus
would. Submit throughput: saturation rounds that alternate off, on, off, on. Generator:
jobs on the tiny diffusers model through each stack by turns, one at a time, the other
stack frozen meanwhile, so the machine's drift hits both alike.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import threading
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass

from bench.context import Context
from bench.load import LoadResult, closed_loop
from bench.overhead import START_TIMEOUT_S, Client, _python, paused
from bench.procs import ROOT, Child, spawn, stop, wait_healthy
from bench.stats import Figure, Goal, Section, percentile
from bench.submit import WARMUP_SECONDS, Submitters
from darkroom import devservers
from darkroom.config import Settings

SIZE, STEPS = 64, 4
GOAL = Goal("<= 3% cost", 0.97, at_most=False, on_ratio=True)
GOAL_TIME = Goal("<= 3% cost", 1.03, on_ratio=True)


@dataclass
class Stack:
    """One side: a Jobs server and a generator, observed or not."""

    name: str
    settings: Settings
    jobs: Child
    port: int
    generator: Child
    metrics_ports: list[int]

    @property
    def pids(self) -> list[int]:
        return [self.jobs.pid, self.generator.pid]


async def _stack(
    ctx: Context, name: str, model_dir: str, *, metrics: bool, sink_port: int | None
) -> Stack:
    settings = ctx.env.settings(
        f"obs-{name}", generator_model_path=model_dir, generator_device="cpu"
    )
    port = devservers.free_port()
    ports = [devservers.free_port(), devservers.free_port()] if metrics else []

    def observed(index: int) -> dict[str, str]:
        env = {"DARKROOM_METRICS_ADDRESS": f"127.0.0.1:{ports[index]}"} if metrics else {}
        if sink_port:
            env["DARKROOM_TRACES_ENDPOINT"] = f"http://127.0.0.1:{sink_port}"
        return env

    jobs = await spawn(
        f"jobs-{name}",
        ["-m", "darkroom.services.jobs"],
        ctx.env.child_env(settings, DARKROOM_JOBS_ADDRESS=f"127.0.0.1:{port}", **observed(0)),
        ctx.log_dir,
    )
    await wait_healthy(jobs, port)
    generator = await spawn(
        f"generator-{name}",
        ["-m", "darkroom.services.generator"],
        ctx.env.child_env(settings, DARKROOM_WORKER_ID=f"bench-obs-{name}", **observed(1)),
        ctx.log_dir,
    )
    return Stack(name, settings, jobs, port, generator, ports)


@contextlib.contextmanager
def scraping(ports: list[int], every_s: float = 1.0) -> Iterator[list[int]]:
    """Scrape each port's /metrics every `every_s` on a thread; yields the bytes read."""
    read = [0]
    stopping = threading.Event()

    def scrape() -> None:
        while not stopping.wait(every_s):
            for port in ports:
                url = f"http://127.0.0.1:{port}/metrics"
                with (
                    contextlib.suppress(OSError),
                    urllib.request.urlopen(url, timeout=2) as response,
                ):
                    read[0] += len(response.read())

    thread = threading.Thread(target=scrape, daemon=True)
    thread.start()
    try:
        yield read
    finally:
        stopping.set()
        thread.join()


async def _submits(ctx: Context, off: Stack, metrics_only: Stack, on: Stack) -> list[Figure]:
    n = ctx.options.concurrency
    seconds = ctx.options.saturation_seconds / 2
    stacks = (off, metrics_only, on)
    sides = {s.name: Submitters(s.settings, s.port, ctx.options.channels) for s in stacks}
    results: dict[str, list[LoadResult]] = {s.name: [] for s in stacks}
    try:
        for submitters in sides.values():
            await closed_loop(submitters.through_grpc, n, WARMUP_SECONDS)
        ctx.say(
            f"observability: submit saturation, {n} in flight, 2 rounds a side of {seconds:g} s"
        )
        with scraping([*metrics_only.metrics_ports, *on.metrics_ports]):
            for _ in range(2):
                for stack in stacks:
                    # The other sides' processes are frozen: only this one's server runs.
                    with paused([p for s in stacks if s is not stack for p in s.pids]):
                        run = await closed_loop(sides[stack.name].through_grpc, n, seconds)
                    results[stack.name].append(run)
    finally:
        for submitters in sides.values():
            await submitters.close()

    def rate(name: str) -> float:
        runs = results[name]
        return sum(run.ok for run in runs) / sum(run.elapsed for run in runs)

    details = {name: [run.as_dict() for run in runs] for name, runs in results.items()}
    base = "the same Jobs server with metrics and tracing off, rounds alternated"
    return [
        Figure(
            "observability",
            f"accepted submits/s, metrics on ({n} in flight)",
            "/s",
            rate("metrics"),
            rate("off"),
            base,
            goals=[GOAL],
            details=details,
        ),
        Figure(
            "observability",
            f"accepted submits/s, metrics and every trace on ({n} in flight)",
            "/s",
            rate("on"),
            rate("off"),
            base,
            goals=[GOAL],
        ),
    ]


async def _jobs(ctx: Context, off: Stack, on: Stack) -> list[Figure]:
    clients = {stack.name: Client(stack.settings, stack.port) for stack in (off, on)}
    # The other sides' processes, frozen while a side runs its job.
    others = {"off": on.pids, "on": off.pids}
    times: dict[str, list[float]] = {"off": [], "on": []}
    n = ctx.options.overhead_jobs
    try:
        for name, client in clients.items():
            with paused(others[name]):
                for _ in range(2):
                    await client.finished(await client.submit(SIZE, STEPS), START_TIMEOUT_S)
        ctx.say(f"observability: {n} jobs a side at {SIZE}x{SIZE}, {STEPS} steps, by turns")
        with scraping(on.metrics_ports):
            for _ in range(n):
                for name in ("off", "on"):
                    with paused(others[name]):
                        began = asyncio.get_running_loop().time()
                        job_id = await clients[name].submit(SIZE, STEPS)
                        await clients[name].finished(job_id, 120)
                        times[name].append(asyncio.get_running_loop().time() - began)
    finally:
        for client in clients.values():
            await client.close()
    on_p50, off_p50 = percentile(times["on"], 50), percentile(times["off"], 50)
    return [
        Figure(
            "observability",
            f"per job, {SIZE}x{SIZE}, {STEPS} steps (submit → succeeded event), median, on",
            "s",
            on_p50,
            off_p50,
            "the same Jobs server and generator with metrics and tracing off, by turns",
            goals=[GOAL_TIME],
            note=f"{1000 * (on_p50 - off_p50):+.1f} ms a job",
            details=times,
        )
    ]


async def _sink(port: int, log_dir_name: str, ctx: Context) -> asyncio.subprocess.Process:
    with (ctx.log_dir / log_dir_name).open("ab") as log_file:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bench.otlp_sink",
            str(port),
            cwd=ROOT,
            stdout=asyncio.subprocess.PIPE,
            stderr=log_file,
        )
    assert process.stdout is not None
    await asyncio.wait_for(process.stdout.readline(), 60)
    return process


async def run(ctx: Context) -> Section:
    section = Section("observability", "8. Observability")
    model_dir = ctx.env.workdir / "tiny-sd"
    if not model_dir.exists():
        await _python(
            "-m", "darkroom.services.generator.tiny_model", str(model_dir), limit_s=START_TIMEOUT_S
        )
    sink_port = devservers.free_port()
    sink = await _sink(sink_port, "otlp_sink.log", ctx)
    stacks: list[Stack] = []
    exported: dict[str, int] = {}
    try:
        stacks.append(await _stack(ctx, "off", str(model_dir), metrics=False, sink_port=None))
        stacks.append(await _stack(ctx, "metrics", str(model_dir), metrics=True, sink_port=None))
        stacks.append(await _stack(ctx, "on", str(model_dir), metrics=True, sink_port=sink_port))
        off, metrics_only, on = stacks
        section.figures += await _submits(ctx, off, metrics_only, on)
        with paused(metrics_only.pids):  # idle, but its loops would share the CPU
            section.figures += await _jobs(ctx, off, on)
    finally:
        for stack in stacks:
            await stop(stack.generator, grace=30)
            await stop(stack.jobs)
        sink.terminate()
        out, _ = await sink.communicate()
        with contextlib.suppress(ValueError, IndexError):
            exported = json.loads(out.decode().strip().splitlines()[-1])
    section.notes.append(
        "Off: `DARKROOM_METRICS_ADDRESS` and `DARKROOM_TRACES_ENDPOINT` empty (nothing counted, "
        "nothing instrumented). On: both set, every trace recorded (`DARKROOM_TRACES_SAMPLE_RATIO` "
        "1), spans batched to an OTLP/gRPC collector in its own process that keeps nothing "
        f"(it took {exported.get('spans', '?')} spans in {exported.get('requests', '?')} "
        "exports), and both /metrics scraped every second. Submit: four saturation rounds, "
        "alternating off and on, on one database; per job: jobs on the tiny model by turns, "
        "the other stack frozen (SIGSTOP) meanwhile."
    )
    return section
