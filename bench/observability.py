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
import os
import sys
import threading
import urllib.request
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from bench.context import Context
from bench.env import AUTH
from bench.load import LoadResult, closed_loop
from bench.overhead import START_TIMEOUT_S, Client, _python, paused
from bench.procs import ROOT, Child, spawn, stop, wait_healthy
from bench.stats import Figure, Goal, Section, percentile
from bench.submit import WARMUP_SECONDS, Submitters
from darkroom import devservers
from darkroom.config import Settings
from darkroom.v1 import job_pb2, jobs_service_pb2

SIZE, STEPS = 64, 4
# The submit rounds' jobs are for a model no generator serves: thousands of them must not
# queue before the jobs timed on the tiny model.
UNSERVED = "bench-unserved"
SUBMIT_SPEC = job_pb2.JobSpec(
    prompt="a lighthouse at dusk", width=64, height=64, steps=1, model=UNSERVED
)
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
    ctx: Context,
    name: str,
    model_dir: str,
    *,
    metrics: bool,
    sink_port: int | None,
    sample_ratio: float = 1.0,
) -> Stack:
    settings = ctx.env.settings(
        f"obs-{name}",
        generator_model_path=model_dir,
        generator_device="cpu",
        models=["tiny-sd", UNSERVED],
    )
    port = devservers.free_port()
    ports = [devservers.free_port(), devservers.free_port()] if metrics else []

    def observed(index: int) -> dict[str, str]:
        env = {"DARKROOM_METRICS_ADDRESS": f"127.0.0.1:{ports[index]}"} if metrics else {}
        if sink_port:
            env["DARKROOM_TRACES_ENDPOINT"] = f"http://127.0.0.1:{sink_port}"
            env["DARKROOM_TRACES_SAMPLE_RATIO"] = str(sample_ratio)
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


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process `pid` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _submitting(submitters: Submitters) -> Callable[[], Awaitable[None]]:
    """SubmitJob of an unserved model's job, over the submitters' channels by turns."""

    async def submit() -> None:
        stub = submitters.stubs[next(submitters.counter) % len(submitters.stubs)]
        request = jobs_service_pb2.SubmitJobRequest(request_id=str(uuid.uuid4()), spec=SUBMIT_SPEC)
        await stub.SubmitJob(request, metadata=AUTH, timeout=10)

    return submit


# The sides of the submit figures: (stack name, what is on).
SUBMIT_SIDES = {
    "metrics": "metrics on",
    "on": "metrics and every trace on",
    "sampled": "metrics on, 10% of traces",
}
# Rounds a side; each round starts at the next side, so that every side takes every place
# in the order equally (the first place was worth 15% here).
ROUNDS_PER_PLACE = 2
WARMUP_JOBS = 4


async def _submits(ctx: Context, stacks: list[Stack]) -> list[Figure]:
    n = ctx.options.concurrency
    seconds = ctx.options.saturation_seconds / 2
    sides = {s.name: Submitters(s.settings, s.port, ctx.options.channels) for s in stacks}
    results: dict[str, list[LoadResult]] = {s.name: [] for s in stacks}
    cpu = dict.fromkeys(results, 0.0)
    rounds = ROUNDS_PER_PLACE * len(stacks)
    try:
        for submitters in sides.values():
            await closed_loop(_submitting(submitters), n, WARMUP_SECONDS)
        ctx.say(
            f"observability: submit saturation, {n} in flight, {rounds} rounds a side of "
            f"{seconds:g} s"
        )
        with scraping([port for stack in stacks for port in stack.metrics_ports]):
            for round_number in range(rounds):
                first = round_number % len(stacks)
                for stack in [*stacks[first:], *stacks[:first]]:
                    # The other sides' processes are frozen: only this one's server runs.
                    with paused([p for s in stacks if s is not stack for p in s.pids]):
                        began = _cpu_seconds(stack.jobs.pid)
                        run = await closed_loop(_submitting(sides[stack.name]), n, seconds)
                        cpu[stack.name] += _cpu_seconds(stack.jobs.pid) - began
                    results[stack.name].append(run)
    finally:
        for submitters in sides.values():
            await submitters.close()

    def rate(name: str) -> float:
        runs = results[name]
        return sum(run.ok for run in runs) / sum(run.elapsed for run in runs)

    def cpu_per_submit(name: str) -> float:
        return 1e6 * cpu[name] / max(1, sum(run.ok for run in results[name]))

    details = {name: [run.as_dict() for run in runs] for name, runs in results.items()}
    base = "the same Jobs server with metrics and tracing off, rounds alternated"
    return [
        Figure(
            "observability",
            f"accepted submits/s, {label} ({n} in flight)",
            "/s",
            rate(name),
            rate("off"),
            base,
            goals=[GOAL],
            details={name: details[name], "off": details["off"]},
        )
        for name, label in SUBMIT_SIDES.items()
    ] + [
        Figure(
            "observability",
            f"Jobs server CPU per accepted submit, {label}",
            "µs",
            cpu_per_submit(name),
            cpu_per_submit("off"),
            "the same Jobs server with metrics and tracing off (its CPU over the same rounds)",
            goals=[GOAL_TIME],
        )
        for name, label in SUBMIT_SIDES.items()
    ]


async def _jobs(ctx: Context, off: Stack, on: Stack) -> list[Figure]:
    clients = {stack.name: Client(stack.settings, stack.port) for stack in (off, on)}
    # The other sides' processes, frozen while a side runs its job.
    others = {"off": on.pids, "on": off.pids}
    times: dict[str, list[float]] = {"off": [], "on": []}
    n = ctx.options.overhead_jobs
    try:
        for _ in range(WARMUP_JOBS):  # by turns too: the first jobs after a freeze are slow
            for name, client in clients.items():
                with paused(others[name]):
                    await client.finished(await client.submit(SIZE, STEPS), START_TIMEOUT_S)
        ctx.say(f"observability: {n} jobs a side at {SIZE}x{SIZE}, {STEPS} steps, by turns")
        with scraping(on.metrics_ports):
            for turn in range(n):
                for name in ("off", "on") if turn % 2 == 0 else ("on", "off"):
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
        folder = str(model_dir)
        stacks.append(await _stack(ctx, "off", folder, metrics=False, sink_port=None))
        stacks.append(await _stack(ctx, "metrics", folder, metrics=True, sink_port=None))
        stacks.append(await _stack(ctx, "on", folder, metrics=True, sink_port=sink_port))
        stacks.append(
            await _stack(
                ctx, "sampled", folder, metrics=True, sink_port=sink_port, sample_ratio=0.1
            )
        )
        off, _, on, _ = stacks
        section.figures += await _submits(ctx, stacks)
        # The sides not compared are idle, but their loops would share the CPU.
        with paused([pid for stack in stacks[1::2] for pid in stack.pids]):
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
        "nothing instrumented). Metrics on: the address set. Traces on: both set, every trace "
        "recorded (`DARKROOM_TRACES_SAMPLE_RATIO=1`) or one in ten (`0.1`), spans batched to "
        "an OTLP/gRPC collector in its own process that keeps nothing "
        f"(it took {exported.get('spans', '?')} spans in {exported.get('requests', '?')} "
        "exports), and every /metrics scraped every second. Submit: saturation rounds taken "
        "by turns, each round starting at the next side, the other sides frozen (SIGSTOP), on "
        "one database; per "
        "job: jobs on the tiny model through the off and every-trace stacks by turns, the "
        "others frozen meanwhile."
    )
    return section
