"""The order in which a model's queued jobs start: owners in turn, then priority, then age.

Each model's queue is weighted fair queuing over owners, kept in Redis beside arq's layout
(`darkroom.keys`: `turns`, `clock`, `owner_line`):

- every owner with work in the queue has a *virtual time* (the `turns` sorted set); the
  take script (`darkroom.consumer`) serves the owner with the lowest, and moves it on by
  its `step`, `STEP_SCALE / weight` rounded (`OwnerPolicy.weight`), so while two owners
  both have work waiting, one of weight 2 starts twice as many jobs as one of weight 1,
  however many each has queued. Virtual times are whole numbers, so Lua and Python
  compute the same order exactly, ties included (equal times go by owner name);
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

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field

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
# Virtual time a start of a weight-1 owner costs; weights are kept to 1 / STEP_SCALE.
STEP_SCALE = 1_000


def band(priority: int) -> int:
    """The first order value of a priority's band: higher priority, lower band."""
    return (PRIORITY_MAX - priority) * BAND_MS


def created_ms(job_id: uuid.UUID) -> int:
    """When a job was created, in ms since the epoch, from its UUIDv7 id (0 for another
    kind of id: such jobs go first in their band)."""
    return job_id.int >> 80 if job_id.version == 7 else 0


def step(weight: float) -> int:
    """The virtual time one start costs an owner of `weight` (at least 1)."""
    return max(1, round(STEP_SCALE / weight))


def encode_policy(policy: OwnerPolicy) -> str:
    """An owner's policy as the take script reads it: "step max_running"."""
    return f"{step(policy.weight)} {policy.max_running}"


@dataclass(frozen=True)
class OwnerTurn:
    """One owner's place in a queue's round: when its next turn comes (virtual time),
    what a turn costs it (`step`), and how many of its messages wait (are not held by a
    worker)."""

    owner: str
    start: int
    step: int
    waiting: int


@dataclass(frozen=True)
class Turns:
    """A snapshot of a queue's round: every owner with work, and the clock."""

    clock: int
    owners: dict[str, OwnerTurn]
    # The owners with waiting work as columns, for the sum in `jobs_ahead`.
    _columns: tuple[list[str], list[int], list[int], list[int]] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        active = [turn for turn in self.owners.values() if turn.waiting > 0]
        columns = (
            [turn.owner for turn in active],
            [turn.start for turn in active],
            [turn.step for turn in active],
            [turn.waiting for turn in active],
        )
        object.__setattr__(self, "_columns", columns)

    @classmethod
    def of(cls, clock: int, owners: Sequence[OwnerTurn]) -> Turns:
        return cls(clock, {turn.owner: turn for turn in owners})

    def jobs_ahead(self, owner: str, rank: int) -> int:
        """How many waiting jobs start before the one at `rank` (0: first) of `owner`'s
        line: its own `rank` ahead of it, and each other owner's jobs whose turns come
        before its turn (at the same virtual time, those of owners whose names sort first,
        as in Redis).

        A sum over the owners with work (well under a millisecond for a thousand), never
        over jobs."""
        turn = self.owners.get(owner)
        start, own_step = (self.clock, STEP_SCALE) if turn is None else (turn.start, turn.step)
        at = start + rank * own_step
        ahead = rank
        for name, other_start, other_step, waiting in zip(*self._columns, strict=True):
            if at < other_start or name == owner:
                continue
            # Its jobs 0..whole-1 come strictly before `at`; job `whole` at or before it.
            whole, rest = divmod(at - other_start, other_step)
            ahead += min(waiting, whole + 1 if rest or name < owner else whole)
        return ahead
