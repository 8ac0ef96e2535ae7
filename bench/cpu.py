"""Where the CPU went during a phase: per-process (and per-thread) CPU time from /proc."""

from __future__ import annotations

import os
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

TICKS = os.sysconf("SC_CLK_TCK")


def parse_stat(stat: str) -> tuple[str, int]:
    """(command name, user + system CPU ticks) from a /proc/…/stat line (a process's or a
    thread's: the name, in parentheses, may itself hold spaces and parentheses)."""
    name = stat[stat.index("(") + 1 : stat.rindex(")")]
    fields = stat[stat.rindex(")") + 2 :].split()
    return name, int(fields[11]) + int(fields[12])


def _processes() -> dict[int, tuple[str, int]]:
    """pid -> (command name, user + system CPU ticks) of every process we can read."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            found[int(entry.name)] = parse_stat((entry / "stat").read_text())
        except OSError:
            continue
    return found


def process_seconds(pid: int) -> float:
    """User + system CPU seconds of process `pid` so far."""
    return parse_stat(Path(f"/proc/{pid}/stat").read_text())[1] / TICKS


def threads(pid: int) -> dict[int, tuple[str, int]]:
    """tid -> (thread name, user + system CPU ticks) of each live thread of process `pid`."""
    found = {}
    for entry in Path(f"/proc/{pid}/task").iterdir():
        try:
            found[int(entry.name)] = parse_stat((entry / "stat").read_text())
        except OSError:
            continue  # it ended meanwhile
    return found


@dataclass
class CpuMeter:
    """Measures CPU use between `start()` and `stop()`; `labels` name pids of interest."""

    labels: dict[int, str] = field(default_factory=dict)
    _before: dict[int, tuple[str, int]] = field(default_factory=dict)
    _began: float = 0.0

    def start(self) -> None:
        self._before, self._began = _processes(), time.monotonic()

    def stop(self) -> dict[str, float]:
        """Cores used by each labelled process, and by the others grouped by name."""
        after, seconds = _processes(), time.monotonic() - self._began
        used: defaultdict[str, float] = defaultdict(float)
        for pid, (name, ticks) in after.items():
            spent = ticks - self._before.get(pid, (name, 0))[1]
            if spent > 0:
                used[self.labels.get(pid, name)] += spent / TICKS / seconds
        ordered = sorted(used.items(), key=lambda item: -item[1])
        return {name: round(cores, 2) for name, cores in ordered if cores >= 0.01}


@dataclass
class Ledger:
    """CPU seconds spent between `start()` and `stop()`, by label: of the processes in
    `processes` (pid -> label), of every process whose command name is in `names` (name ->
    label: a server's many processes), and of the threads in `threads` (tid -> (pid,
    label)), whose time moves from their process's label to their own; every other
    process's under `others`."""

    processes: dict[int, str] = field(default_factory=dict)
    names: dict[str, str] = field(default_factory=dict)
    threads: dict[int, tuple[int, str]] = field(default_factory=dict)
    others: str = "other processes"
    _before: dict[int, tuple[str, int]] = field(default_factory=dict)
    _before_threads: dict[int, int] = field(default_factory=dict)
    # After `stop()`: the CPU seconds of each thread in `threads`.
    by_thread: dict[int, float] = field(default_factory=dict)

    def _thread_ticks(self) -> dict[int, int]:
        ticks = {}
        for pid in {pid for pid, _ in self.threads.values()}:
            ticks.update({tid: spent for tid, (_, spent) in threads(pid).items()})
        return ticks

    def start(self) -> None:
        self._before, self._before_threads = _processes(), self._thread_ticks()

    def stop(self) -> dict[str, float]:
        after, after_threads = _processes(), self._thread_ticks()
        used: defaultdict[str, int] = defaultdict(int)
        for pid, (name, ticks) in after.items():
            label = self.processes.get(pid) or self.names.get(name) or self.others
            used[label] += ticks - self._before.get(pid, (name, 0))[1]
        for tid, (pid, label) in self.threads.items():
            before = self._before_threads.get(tid, 0)
            # A thread that ended meanwhile: its time stays with its process.
            spent = after_threads.get(tid, before) - before
            self.by_thread[tid] = spent / TICKS
            used[label] += spent
            used[self.processes[pid]] -= spent
        return {label: ticks / TICKS for label, ticks in used.items()}


def describe(usage: dict[str, float], top: int = 5) -> str:
    parts = [f"{name} {cores:.2f}" for name, cores in list(usage.items())[:top]]
    return f"{sum(usage.values()):.2f} cores: " + ", ".join(parts)
