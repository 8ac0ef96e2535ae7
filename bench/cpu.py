"""Where the CPU went during a phase: per-process CPU time from /proc, in cores."""

from __future__ import annotations

import os
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

TICKS = os.sysconf("SC_CLK_TCK")


def _processes() -> dict[int, tuple[str, int]]:
    """pid -> (command name, user + system CPU ticks) of every process we can read."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2 :].split()
        found[int(entry.name)] = (name, int(fields[11]) + int(fields[12]))
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


def describe(usage: dict[str, float], top: int = 5) -> str:
    parts = [f"{name} {cores:.2f}" for name, cores in list(usage.items())[:top]]
    return f"{sum(usage.values()):.2f} cores: " + ", ".join(parts)
