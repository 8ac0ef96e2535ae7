"""The order in which a model's queued jobs start: owners in turn, then priority, then age.

Each model's queue is weighted fair queuing over owners, kept in Redis beside arq's layout
(`darkroom.keys`: `turns`, `clock`, `owner_line`):

- every owner with work in the queue has a *virtual time* (the `turns` sorted set); the
  take script (`darkroom.consumer`) serves the owner with the lowest, and moves it on by
  `1 / weight` (`OwnerPolicy.weight`), so while two owners both have work waiting, one of
  weight 2 starts twice as many jobs as one of weight 1, however many each has queued;
- the queue's *virtual clock* is the virtual time of the owner served last; an owner that
  comes with work starts from it (an idle owner catches up to it), so waiting banks no
  turns and a newcomer is served within one round, behind no one's backlog;
- within an owner, its *line* (a sorted set) orders its messages by `order`: priority
  band first, then age (the job id's time: ids are UUIDv7), and a retry waiting out its
  backoff takes its place when the backoff ends;
- an owner at its running limit (`OwnerPolicy.max_running`, over every model) is passed
  over until one of its jobs ends; its turn is kept.

Redis holds only this cache of the order: every input is in the job row (owner,
priority, id, run_after), so the reconciler's re-enqueue after a Redis flush rebuilds it.

`jobs_ahead` counts, from a `Turns` snapshot, how many jobs will start before one.
"""

from __future__ import annotations

import bisect
import math
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from itertools import accumulate

from darkroom.config import OwnerPolicy
from darkroom.validation import PRIORITY_MAX

# Orders span this many ms per priority band (about 300 years): band + time stays an
# exact integer in a double for every priority.
BAND_MS = 10**13
# Owners the take script looks at before it gives up (an owner at its running limit, or
# whose first messages are all held or backing off, is passed over).
OWNERS_PER_TAKE = 256
# Messages of one owner's line it looks at.
LINE_PER_TAKE = 32
# Up to this many owners with work, positions are counted exactly (a sum over owners);
# beyond, estimated in O(log owners) from prefix sums, off by a few jobs per hundred owners
# partly ahead (tests/darkroom/test_scheduling.py measures it against a simulation).
EXACT_OWNERS = 64


def band(priority: int) -> int:
    """The first order value of a priority's band: higher priority, lower band."""
    return (PRIORITY_MAX - priority) * BAND_MS


def created_ms(job_id: uuid.UUID) -> int:
    """When a job was created, in ms since the epoch, from its UUIDv7 id (0 for another
    kind of id: such jobs go first in their band)."""
    return job_id.int >> 80 if job_id.version == 7 else 0


def encode_policy(policy: OwnerPolicy) -> str:
    """An owner's policy as the take script reads it: "weight max_running"."""
    return f"{policy.weight!r} {policy.max_running}"


@dataclass(frozen=True)
class OwnerTurn:
    """One owner's place in a queue's round: when its next turn comes (virtual time),
    its weight, and how many of its messages wait (are not held by a worker)."""

    owner: str
    start: float
    weight: float
    waiting: int


@dataclass(frozen=True)
class Turns:
    """A snapshot of a queue's round: every owner with work, and the clock."""

    clock: float
    owners: dict[str, OwnerTurn]
    _starts: list[float] = field(init=False, repr=False)
    _ends: list[float] = field(init=False, repr=False)
    _weight_starts: list[float] = field(init=False, repr=False)
    _moment_starts: list[float] = field(init=False, repr=False)
    _weight_ends: list[float] = field(init=False, repr=False)
    _moment_ends: list[float] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        # For the estimate: owner p starts ~weight_p jobs per unit of virtual time from
        # start_p until its waiting work runs out at end_p; sorted, with prefix sums.
        active = [turn for turn in self.owners.values() if turn.waiting > 0]
        by_start = sorted(active, key=lambda turn: turn.start)
        by_end = sorted(active, key=lambda turn: turn.start + turn.waiting / turn.weight)
        object.__setattr__(self, "_starts", [turn.start for turn in by_start])
        object.__setattr__(
            self, "_ends", [turn.start + turn.waiting / turn.weight for turn in by_end]
        )
        object.__setattr__(self, "_weight_starts", _sums(t.weight for t in by_start))
        object.__setattr__(self, "_moment_starts", _sums(t.weight * t.start for t in by_start))
        object.__setattr__(self, "_weight_ends", _sums(t.weight for t in by_end))
        object.__setattr__(
            self,
            "_moment_ends",
            _sums(t.weight * (t.start + t.waiting / t.weight) for t in by_end),
        )

    @classmethod
    def of(cls, clock: float, owners: Sequence[OwnerTurn]) -> Turns:
        return cls(clock, {turn.owner: turn for turn in owners})

    def jobs_ahead(self, owner: str, rank: int) -> int:
        """How many waiting jobs start before the one at `rank` (0: first) of `owner`'s
        line: its own `rank` ahead of it, and each other owner's jobs whose turns come
        before its turn (ties go to the owner whose name sorts first, as in Redis)."""
        turn = self.owners.get(owner)
        if turn is None:  # not in the round (yet): it will enter at the clock
            turn = OwnerTurn(owner, self.clock, 1.0, rank + 1)
        at = turn.start + rank / turn.weight
        if len(self.owners) <= EXACT_OWNERS:
            return rank + sum(
                _turns_before(other, at, first=other.owner < owner)
                for other in self.owners.values()
                if other.owner != owner
            )
        return rank + max(0, round(self._estimate(at) - min(rank, turn.waiting)))

    def _estimate(self, at: float) -> float:
        """sum over owners of min(waiting, weight x (at - start)), clamped at 0: owners whose
        start is before `at` add weight x (at - start), less the excess of those whose
        work ended before it (weight x (at - end)); plus half a job per other owner partly
        served by then (its turn may fall either side of `at`)."""
        started = bisect.bisect_left(self._starts, at)
        ended = bisect.bisect_right(self._ends, at)
        weight = self._weight_starts[started] - self._weight_ends[ended]
        moment = self._moment_starts[started] - self._moment_ends[ended]
        return at * weight - moment + 0.5 * max(0, started - ended - 1)


def _turns_before(turn: OwnerTurn, at: float, *, first: bool) -> int:
    """How many of `turn`'s waiting jobs come before virtual time `at` (at it too when
    the owner sorts `first`)."""
    span = (at - turn.start) * turn.weight
    if span < -1e-9:
        return 0
    whole = round(span)
    tie = abs(span - whole) < 1e-9  # its job `whole` falls at `at`: first if `first`
    count = (whole + 1 if first else whole) if tie else math.ceil(span)
    return max(0, min(turn.waiting, count))


def _sums(values: Iterable[float]) -> list[float]:
    """Prefix sums with a leading 0: `sums[i]` is the sum of the first i values."""
    return [0.0, *accumulate(values)]
