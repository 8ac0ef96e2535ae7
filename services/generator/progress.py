"""The steps a running attempt has made, and which of them are due as progress events.

The pipeline thread records each step (`record`); the attempt's monitor asks, on its own
clock, which steps to publish (`due`): every step while a token bucket (`rate` events a
second, as many in a burst) covers them, else only the latest, so short jobs report every
step and long fast ones are coalesced.
"""

from __future__ import annotations

import time


class StepProgress:
    """Steps recorded by the pipeline thread and published by the event loop."""

    def __init__(self, total: int, rate: float) -> None:
        self.latest = 0
        self.total = total
        self._published = 0
        self._rate = rate
        self._tokens = rate
        self._refilled = time.monotonic()

    def record(self, step: int, total: int) -> bool:
        """The pipeline completed `step` of `total`; whether it is the first step."""
        first = self.latest == 0
        self.total, self.latest = total, step
        return first

    def due(self, *, final: bool = False) -> list[int]:
        """The steps to publish now (marked published); `final`: the attempt is done, so
        at least its latest step goes out whatever the bucket holds."""
        latest, first = self.latest, self._published + 1
        if latest < first:
            return []
        now = time.monotonic()
        self._tokens = min(self._rate, self._tokens + (now - self._refilled) * self._rate)
        self._refilled = now
        if self._tokens < 1:
            if not final:
                return []
            self._published = latest
            return [latest]
        steps = list(range(first, latest + 1)) if self._tokens >= latest - first + 1 else [latest]
        self._published = latest
        self._tokens -= len(steps)
        return steps
