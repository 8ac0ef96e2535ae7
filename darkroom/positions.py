"""Where a queued job stands: how many jobs start before it, why it waits, and when it
should start and end.

`QueueView` reads, at most once a `max_age` per model and process, a snapshot of the
model's round (`darkroom.scheduling.Turns`: every owner's next turn, step and waiting
count, from one script) and its capacity (live workers, recent median run time); then
each job's position costs one round trip (its rank in its owner's line, a sorted set:
O(log n)) and a sum over owners in memory, never a scan of the queue. The ETA assumes the
model's workers each take jobs back to back at the recent median run time: the k-th job
ahead goes to the worker free soonest, so the job starts when the `(k mod W)`-th soonest
free worker is free, plus `k div W` whole runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import structlog
from google.protobuf import timestamp_pb2
from redis.asyncio import Redis
from redis.exceptions import RedisError

from darkroom.capacity import Capacity, WorkerRecord
from darkroom.config import Settings
from darkroom.keys import Keys
from darkroom.models import JobRecord
from darkroom.process import raise_if_cancelled
from darkroom.queue import in_progress_key
from darkroom.scheduling import OwnerTurn, Turns
from darkroom.v1 import job_pb2

log = structlog.get_logger("darkroom.positions")

# Every owner of a queue's round, as the take script sees them: the clock, then per owner
# its virtual time, policy ("step max_running"), messages in its line (waiting ones only)
# and held ones.
# KEYS: turns, clock, policies. ARGV: owner-line prefix, running prefix.
SNAPSHOT_SCRIPT = """
local reply = {redis.call('GET', KEYS[2]) or '0'}
local turns = redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES')
for i = 1, #turns, 2 do
  local owner = turns[i]
  reply[#reply + 1] = owner
  reply[#reply + 1] = turns[i + 1]
  reply[#reply + 1] = redis.call('HGET', KEYS[3], owner) or '1 0'
  reply[#reply + 1] = redis.call('ZCARD', ARGV[1] .. owner)
  reply[#reply + 1] = redis.call('ZCARD', ARGV[2] .. owner)
end
return reply
"""


@dataclass(frozen=True)
class QueuedJob:
    """What a position is computed from: a QUEUED job's row, or what its events said."""

    id: uuid.UUID
    owner: str
    model: str
    attempt: int
    run_after: datetime

    @classmethod
    def of(cls, row: JobRecord) -> QueuedJob:
        return cls(row.id, row.owner, row.model, row.attempt, row.run_after)


@dataclass(frozen=True)
class ModelCapacity:
    """A model's live workers and recent median run time, at one moment."""

    workers: list[WorkerRecord]
    median_run: timedelta | None


@dataclass
class _Cached:
    at: float
    value: Any


class QueueView:
    """Computes `QueueStatus` messages for queued jobs, from snapshots at most `max_age`
    old (seconds)."""

    def __init__(self, redis: Redis, settings: Settings, *, max_age: float = 1.0) -> None:
        self._redis = redis
        self._settings = settings
        self._keys = settings.keys
        self.capacity = Capacity(redis, settings.keys)
        self._max_age = max_age
        self._cache: dict[tuple[str, str], _Cached] = {}
        self._snapshot = redis.register_script(SNAPSHOT_SCRIPT)

    async def _cached(self, kind: str, model: str, read: Any) -> Any:
        entry = self._cache.get((kind, model))
        now = time.monotonic()
        if entry is None or now - entry.at > self._max_age:
            entry = _Cached(now, await read(model))
            self._cache[(kind, model)] = entry
        return entry.value

    async def turns(self, model: str) -> Turns:
        """The model's round now (at most `max_age` old)."""
        return cast(Turns, await self._cached("turns", model, self._read_turns))

    async def model_capacity(self, model: str) -> ModelCapacity:
        return cast(ModelCapacity, await self._cached("capacity", model, self.read_capacity))

    async def _read_turns(self, model: str) -> Turns:
        queue = self._settings.queue_for(model)
        reply = await cast(
            Awaitable[list[Any]],
            self._snapshot(
                keys=[Keys.turns(queue), Keys.clock(queue), self._keys.policies],
                args=[Keys.owner_lines(queue), self._keys.running_prefix],
            ),
        )
        clock = int(float(reply[0]))
        owners = []
        for i in range(1, len(reply), 5):
            owner = _text(reply[i])
            step = int(_text(reply[i + 2]).split()[0])
            waiting = int(reply[i + 3])
            owners.append(OwnerTurn(owner, max(int(float(reply[i + 1])), clock), step, waiting))
        return Turns.of(clock, owners)

    async def read_capacity(self, model: str) -> ModelCapacity:
        """The model's live workers and median run time now (not cached)."""
        workers = await self.capacity.workers(model)
        return ModelCapacity(workers, await self.capacity.median_run(model))

    async def status(self, job: QueuedJob) -> job_pb2.QueueStatus:
        """Where `job` stands now."""
        [status] = await self.statuses([job])
        return status

    async def statuses(self, jobs: Sequence[QueuedJob]) -> list[job_pb2.QueueStatus]:
        """Where each of `jobs` stands now: one round trip for all, then a sum over the
        owners of their model's snapshot for each."""
        async with self._redis.pipeline(transaction=False) as pipe:
            for job in jobs:
                queue = self._settings.queue_for(job.model)
                message_id = self._keys.message_id(job.id, job.attempt)
                pipe.zrank(Keys.owner_line(queue, job.owner), message_id)
                pipe.zcard(self._keys.running(job.owner))
                pipe.exists(in_progress_key(message_id))
            replies = await pipe.execute()
        now = datetime.now(UTC)
        statuses = []
        for index, job in enumerate(jobs):
            rank, running, taken = replies[3 * index : 3 * index + 3]
            turns = await self.turns(job.model)
            capacity = await self.model_capacity(job.model)
            status = self._compose(
                job,
                rank=rank,
                running=int(running),
                taken=bool(taken),
                turns=turns,
                capacity=capacity,
                now=now,
            )
            statuses.append(status)
        return statuses

    def _compose(
        self,
        job: QueuedJob,
        *,
        rank: int | None,
        running: int,
        taken: bool,
        turns: Turns,
        capacity: ModelCapacity,
        now: datetime,
    ) -> job_pb2.QueueStatus:
        policy = self._settings.policy_for(job.owner)
        status = job_pb2.QueueStatus(workers=len(capacity.workers))
        if rank is None and taken:  # a worker took it and is claiming it
            status.reason = job_pb2.WAIT_REASON_QUEUED
            status.detail = "starting"
            return status
        if rank is None:  # not in its line: Redis lost it, or it is being enqueued
            status.detail = "its place in the queue is being restored"
            return status
        ahead = turns.jobs_ahead(job.owner, int(rank))
        status.jobs_ahead = ahead
        if job.run_after > now:
            status.reason = job_pb2.WAIT_REASON_RETRY_BACKOFF
            status.detail = f"retrying at {job.run_after:%H:%M:%S} UTC, after a failed attempt"
        elif not capacity.workers:
            status.reason = job_pb2.WAIT_REASON_NO_WORKER
            status.detail = f"waiting for a worker: none serves {job.model} now"
            return status
        elif policy.max_running and running >= policy.max_running:
            status.reason = job_pb2.WAIT_REASON_OWNER_LIMIT
            status.detail = (
                f"waiting for one of your {running} running jobs to end "
                f"(your limit is {policy.max_running})"
            )
        else:
            status.reason = job_pb2.WAIT_REASON_QUEUED
            status.detail = f"queued behind {ahead} job{'s' if ahead != 1 else ''}"
            if not ahead:
                status.detail = "next to start"
        start = estimated_start(capacity, ahead, now)
        if start is not None and capacity.median_run is not None:
            start = max(start, job.run_after)
            status.estimated_start_time.CopyFrom(_timestamp(start))
            status.estimated_end_time.CopyFrom(_timestamp(start + capacity.median_run))
        return status


class PositionBoard:
    """The positions of every queued job an Events process watches, looked at together
    once an `interval` (one round trip for all of them, not one a watcher); a watcher is
    woken when its job's position changed (see `changed`). Jobs newly watched get their
    first look together too, within `FIRST_LOOK` of arriving."""

    FIRST_LOOK = 0.02  # seconds: new watchers arriving meanwhile share one look

    def __init__(self, view: QueueView, interval: timedelta) -> None:
        self._view = view
        self._interval = interval.total_seconds()
        self._jobs: dict[uuid.UUID, QueuedJob] = {}
        self._wakes: dict[uuid.UUID, set[asyncio.Event]] = {}
        self._latest: dict[uuid.UUID, job_pb2.QueueStatus] = {}
        self._new: set[uuid.UUID] = set()
        self._arrived = asyncio.Event()
        self._rounds: dict[str, object] = {}  # per model, its round at the last pass
        self._settled: set[uuid.UUID] = set()  # looked at since their backoff ended
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="positions")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    def watch(self, job: QueuedJob, wake: asyncio.Event) -> None:
        """Follow `job` (queued) for the watcher woken by `wake`."""
        known = self._jobs.get(job.id)
        if known is not None and known.attempt != job.attempt:
            self._latest.pop(job.id, None)
            self._settled.discard(job.id)
        self._jobs[job.id] = job
        self._wakes.setdefault(job.id, set()).add(wake)
        if job.id in self._latest:
            wake.set()  # its position is known already: this watcher has not heard it
        else:
            self._new.add(job.id)
            self._arrived.set()

    def unwatch(self, job_id: uuid.UUID, wake: asyncio.Event) -> None:
        wakes = self._wakes.get(job_id)
        if wakes is None:
            return
        wakes.discard(wake)
        if not wakes:
            del self._wakes[job_id]
            self._jobs.pop(job_id, None)
            self._latest.pop(job_id, None)
            self._new.discard(job_id)
            self._settled.discard(job_id)

    def latest(self, job_id: uuid.UUID) -> job_pb2.QueueStatus | None:
        """The job's position as last looked at (None: not yet)."""
        return self._latest.get(job_id)

    async def _moved(self, jobs: list[QueuedJob]) -> list[QueuedJob]:
        """The jobs of the models whose round or workers changed since the last pass (a
        position follows from those alone: nothing moved, nothing to look at), and those
        whose backoff ended since."""
        moved, now = set(), datetime.now(UTC)
        for model in {job.model for job in jobs}:
            turns = await self._view.turns(model)
            capacity = await self._view.model_capacity(model)
            workers = [(w.worker_id, w.busy, w.job_started_at) for w in capacity.workers]
            state = (turns.clock, turns.owners, workers, capacity.median_run)
            if self._rounds.get(model) != state:
                self._rounds[model] = state
                moved.add(model)
        return [
            job
            for job in jobs
            if job.model in moved or (job.run_after <= now and job.id not in self._settled)
        ]

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        next_pass = loop.time() + self._interval
        while True:
            raise_if_cancelled()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), max(0.0, next_pass - loop.time()))
            everyone = loop.time() >= next_pass
            if not everyone:
                await asyncio.sleep(self.FIRST_LOOK)
            self._arrived.clear()
            ids = list(self._jobs) if everyone else [i for i in self._new if i in self._jobs]
            self._new.clear()
            if everyone:
                next_pass = loop.time() + self._interval
            try:
                await self._pass([self._jobs[job_id] for job_id in ids], everyone=everyone)
            except (RedisError, OSError, TimeoutError) as exc:
                raise_if_cancelled()
                log.debug("positions_unknown", error=repr(exc))
            except Exception as exc:  # noqa: BLE001 - positions must not stop for good
                log.warning("positions_pass_failed", error=repr(exc))

    async def _pass(self, jobs: list[QueuedJob], *, everyone: bool = False) -> None:
        if everyone:
            jobs = await self._moved(jobs)
        if not jobs:
            return
        for job, status in zip(jobs, await self._view.statuses(jobs), strict=True):
            if self._jobs.get(job.id) is not job:
                continue  # unwatched, or queued again, meanwhile
            if job.run_after <= datetime.now(UTC):
                self._settled.add(job.id)
            if changed(self._latest.get(job.id), status):
                self._latest[job.id] = status
                for wake in self._wakes.get(job.id, ()):
                    wake.set()


def estimated_start(capacity: ModelCapacity, ahead: int, now: datetime) -> datetime | None:
    """When the job with `ahead` jobs before it should start, if anything can say."""
    run = capacity.median_run
    if run is None or not capacity.workers:
        return None
    free_in = sorted(
        max(0.0, worker.job_started_at + run.total_seconds() - now.timestamp())
        if worker.busy and worker.job_started_at is not None
        else 0.0
        for worker in capacity.workers
    )
    rounds, slot = divmod(ahead, len(free_in))
    return now + timedelta(seconds=free_in[slot]) + run * rounds


def changed(before: job_pb2.QueueStatus | None, after: job_pb2.QueueStatus) -> bool:
    """Whether a watcher should hear of `after`, having last heard `before`: the number
    ahead, the reason or the workers changed, or the estimated start moved by more than
    10 % of the wait (and at least a second)."""
    if before is None:
        return True
    if (before.jobs_ahead, before.reason, before.workers) != (
        after.jobs_ahead,
        after.reason,
        after.workers,
    ):
        return True
    if before.HasField("estimated_start_time") != after.HasField("estimated_start_time"):
        return True
    if not after.HasField("estimated_start_time"):
        return False
    old = before.estimated_start_time.ToDatetime(UTC)
    new = after.estimated_start_time.ToDatetime(UTC)
    wait = max(1.0, (old - datetime.now(UTC)).total_seconds())
    return abs((new - old).total_seconds()) > max(1.0, 0.1 * wait)


def _timestamp(moment: datetime) -> timestamp_pb2.Timestamp:
    message = timestamp_pb2.Timestamp()
    message.FromDatetime(moment)
    return message


def _text(value: bytes | str | int) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
