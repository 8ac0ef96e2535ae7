"""Where the time of Darkroom's processes goes: the generator's own account of its
pipeline time, the CPU ledger of a stack (the generator's pipeline threads told apart with
py-spy, when installed), and py-spy profiles summarized as top functions by self samples."""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from bench.cpu import Ledger, threads

PIPELINE = "generator pipeline thread + torch intra-op threads"
OTHERS = "other processes (not Darkroom's)"
LABELS = {
    "jobs": "Jobs",
    "events": "Events",
    "reconciler": "reconciler",
    "bench": "bench clients (one process)",
}
SERVERS = {"postgres": "Postgres (whole server)", "redis-server": "Redis"}


def generate_seconds(log_text: str, job_ids: set[str]) -> list[float]:
    """`generate_ms` of the generator's `attempt_succeeded` lines for `job_ids`, in s."""
    found = []
    for line in log_text.splitlines():
        if "attempt_succeeded" not in line:
            continue
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if entry.get("event") == "attempt_succeeded" and entry.get("job_id") in job_ids:
            found.append(float(entry["generate_ms"]) / 1000)
    return found


def py_spy() -> str | None:
    """The py-spy executable: beside this Python's, else on PATH; None when missing."""
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.exists() else shutil.which("py-spy")


async def python_threads(pid: int) -> dict[int, str]:
    """OS thread id -> Python thread name of each Python thread of `pid` (`py-spy dump`);
    empty without py-spy. Threads that run no Python (torch's OpenMP workers, gRPC's
    own) are not among them."""
    program = py_spy()
    if program is None:
        return {}
    process = await asyncio.create_subprocess_exec(
        program,
        "dump",
        "--pid",
        str(pid),
        "--json",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    out, _ = await asyncio.wait_for(process.communicate(), 60)
    if process.returncode != 0:
        return {}
    return {int(t["os_thread_id"]): str(t["thread_name"]) for t in json.loads(out)}


def _stacks(collapsed: str) -> list[tuple[str, int]]:
    """(stack, samples) of each line of py-spy's raw output, `frame;frame;…;leaf SAMPLES`."""
    found = []
    for line in collapsed.splitlines():
        stack, _, number = line.rpartition(" ")
        if stack and number.isdigit():
            found.append((stack, int(number)))
    return found


def top_self(collapsed: str, count: int = 10) -> list[tuple[str, int]]:
    """The `count` functions with the most self samples (as the leaf of a stack) in
    py-spy's raw (collapsed stacks) output."""
    samples: Counter[str] = Counter()
    for stack, number in _stacks(collapsed):
        samples[stack.rsplit(";", 1)[-1]] += number
    return samples.most_common(count)


def summary(name: str, collapsed: str, count: int = 10) -> str:
    """A text table of `top_self`, with each function's share of the samples."""
    total = sum(number for _, number in _stacks(collapsed))
    lines = [f"{name}: top {count} functions by self samples ({total} samples, idle left out)"]
    lines += [
        f"{number:8d} {100 * number / max(total, 1):5.1f}%  {frame}"
        for frame, number in top_self(collapsed, count)
    ]
    return "\n".join(lines) + "\n"


@dataclass
class Recording:
    """`py-spy record` of one process, raw output to `raw`."""

    name: str
    process: asyncio.subprocess.Process
    raw: Path

    async def finish(self, folder: Path) -> Path | None:
        """Stop the recorder; write `folder/NAME.txt`, the summary (None if nothing came)."""
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGINT)
        try:
            await asyncio.wait_for(self.process.wait(), 60)
        except TimeoutError:
            self.process.kill()
            await self.process.wait()
        if not self.raw.exists():
            return None
        path = folder / f"{self.name}.txt"
        path.write_text(summary(self.name, self.raw.read_text()))
        return path


async def record(pids: dict[int, str], folder: Path) -> list[Recording]:
    """Start `py-spy record --format raw` on each process (pid -> name); none without
    py-spy. Non-blocking sampling, so the processes are not paused to be read."""
    program = py_spy()
    if program is None:
        return []
    await asyncio.to_thread(folder.mkdir, parents=True, exist_ok=True)
    recordings = []
    for pid, name in pids.items():
        raw = folder / f"{name}.raw"
        raw.unlink(missing_ok=True)
        with (folder / f"{name}.py-spy.log").open("wb") as log_file:
            process = await asyncio.create_subprocess_exec(
                program,
                "record",
                "--pid",
                str(pid),
                "--format",
                "raw",
                "--output",
                str(raw),
                "--rate",
                "100",
                "--nonblocking",
                stdout=log_file,
                stderr=log_file,
            )
        recordings.append(Recording(name, process, raw))
    return recordings


async def pipeline_threads(pid: int, live: dict[int, tuple[str, int]]) -> tuple[set[int], str]:
    """The threads of generator `pid` that run its pipeline, and how they were told apart.

    The pipeline thread is the Python thread named `pipeline…` (its OS name, where Python
    sets one, or py-spy's view). torch's intra-op (OpenMP) workers run no Python and keep
    the process's name: counted with it, since they work only inside the pipeline's call.
    `live` is `cpu.threads(pid)`.
    """
    named = await python_threads(pid)
    process_name = live[pid][0] if pid in live else ""
    pipeline = {
        tid
        for tid, (comm, _) in live.items()
        if comm.startswith("pipeline") or named.get(tid, "").startswith("pipeline")
    }
    if not named:
        how = "pipeline thread by its OS name" if pipeline else "not split (no py-spy)"
        return pipeline, how
    intra_op = {tid for tid, (comm, _) in live.items() if tid not in named and comm == process_name}
    rest = sorted(named[tid] for tid in named.keys() - pipeline)
    rest += sorted({comm for tid, (comm, _) in live.items() if tid not in named.keys() | intra_op})
    how = (
        f"pipeline thread {sorted(named[t] for t in pipeline if t in named)} (py-spy) + "
        f"{len(intra_op)} thread(s) that run no Python under the process's name (torch's "
        f"intra-op workers among them); outside: {rest}"
    )
    return pipeline | intra_op, how


async def cpu_ledger(pids: dict[str, int]) -> tuple[Ledger, str]:
    """A ledger of the processes `pids` (by key: jobs, events, reconciler, generator,
    bench), Postgres and Redis, the generator's pipeline threads apart; and how those
    threads were found."""
    generator = pids["generator"]
    tids, how = await pipeline_threads(generator, threads(generator))
    processes = {pid: LABELS[key] for key, pid in pids.items() if key in LABELS}
    processes[generator] = "generator outside its pipeline" if tids else "generator (whole)"
    pipeline = {tid: (generator, PIPELINE) for tid in tids}
    return Ledger(processes, SERVERS, pipeline, OTHERS), how


@dataclass
class Watch:
    """A stack's CPU ledger over a window, and py-spy profiles of it when asked."""

    ledger: Ledger
    how: str
    folder: Path
    recordings: list[Recording]

    @classmethod
    async def start(cls, pids: dict[str, int], folder: Path, profile: bool) -> Watch:
        """Watch the processes `pids` (by key, as `cpu_ledger` takes them) from now."""
        ledger, how = await cpu_ledger(pids)
        services = {pid: key for key, pid in pids.items() if key != "bench"}
        recordings = await record(services, folder) if profile else []
        ledger.start()
        return cls(ledger, how, folder, recordings)

    async def stop(self) -> tuple[dict[str, float], list[Path]]:
        """CPU seconds by label since `start()`, and the profile summaries written."""
        cpu = self.ledger.stop()
        written = [path for r in self.recordings if (path := await r.finish(self.folder))]
        return cpu, written
