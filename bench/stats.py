"""Figures, their baselines and goals, and the statistics they are made of."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any


def percentile(values: Sequence[float], q: float) -> float:
    """The `q`-th percentile (0-100) by linear interpolation; NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else math.nan


def summary_ms(seconds: Sequence[float]) -> dict[str, float | int]:
    """Count, p50, p90, p99 and max of durations given in seconds, in milliseconds."""
    return {
        "n": len(seconds),
        "p50_ms": percentile(seconds, 50) * 1000,
        "p90_ms": percentile(seconds, 90) * 1000,
        "p99_ms": percentile(seconds, 99) * 1000,
        "max_ms": max(seconds) * 1000 if seconds else math.nan,
    }


@dataclass
class Goal:
    """A target: our number (or its ratio to the baseline) at most, or at least, `limit`."""

    text: str
    limit: float
    at_most: bool = True
    on_ratio: bool = False

    def passed(self, value: float | None) -> bool | None:
        if value is None or math.isnan(value):
            return None
        return value <= self.limit if self.at_most else value >= self.limit


@dataclass
class Figure:
    """One measured number, the baseline measured beside it, and their ratio."""

    section: str
    name: str
    unit: str
    ours: float | None
    baseline: float | None
    baseline_label: str
    goals: list[Goal] = field(default_factory=list)
    note: str = ""
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def ratio(self) -> float | None:
        if self.ours is None or self.baseline is None or self.baseline == 0:
            return None
        return self.ours / self.baseline

    def goal_results(self) -> list[tuple[Goal, bool | None]]:
        return [
            (goal, goal.passed(self.ratio if goal.on_ratio else self.ours)) for goal in self.goals
        ]

    @property
    def passed(self) -> bool | None:
        """All goals met (None: no goal, or one could not be judged)."""
        results = [passed for _, passed in self.goal_results()]
        if not results or None in results:
            return None
        return all(results)

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["ratio"] = self.ratio
        data["passed"] = self.passed
        data["goals"] = [{**asdict(goal), "passed": passed} for goal, passed in self.goal_results()]
        return data


@dataclass
class Section:
    """The figures of one part of the suite, or why it was not measured."""

    key: str
    title: str
    figures: list[Figure] = field(default_factory=list)
    skipped: str = ""
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)
