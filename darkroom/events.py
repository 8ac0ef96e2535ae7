"""The event schema and the per-job Redis stream that carries it: its one home.

Each job has one stream (`keys.Keys.events`); an entry holds one serialized
`darkroom.v1.JobEvent` under the field `e`, and the entry id is the event id (the resume
token). Streams are trimmed approximately and expire some hours after the terminal event.
Writing (`EventLog.append…`) and reading (`EventLog.read`, `last`, `decode`) both live
here; nobody else knows the entry format.
"""

from __future__ import annotations

import enum
import hashlib
import uuid
from collections.abc import Awaitable, Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, cast

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.exceptions import NoScriptError

from darkroom.convert import timestamp
from darkroom.keys import Keys
from darkroom.v1 import events_service_pb2, job_pb2

JobEvent = events_service_pb2.JobEvent
EVENT_FIELD = b"e"
TERMINAL_KINDS = frozenset({"succeeded", "failed", "cancelled"})


Entry = tuple[str, JobEvent]  # (event id, event)
# The cursor of a reader that starts before the first event.
START = "0-0"


class Continuity(enum.Enum):
    """What reading a job's log after a cursor found."""

    OK = "ok"  # entries after the cursor, with nothing lost before them
    GAP = "gap"  # the cursor is no longer in the stream: entries may have been trimmed
    GONE = "gone"  # no stream at all (expired, or Redis lost its data)


def decode(fields: Mapping[bytes, bytes]) -> JobEvent:
    """The event held by one stream entry's fields."""
    return JobEvent.FromString(fields[EVENT_FIELD])


def decode_entries(raw: Iterable[tuple[bytes | str, Mapping[bytes, bytes]]]) -> list[Entry]:
    """`(event id, event)` pairs from an XRANGE / XREAD / XREVRANGE reply's entries."""
    return [
        (entry_id.decode() if isinstance(entry_id, bytes) else entry_id, decode(fields))
        for entry_id, fields in raw
    ]


def _event(job_id: uuid.UUID | str) -> JobEvent:
    return JobEvent(job_id=str(job_id), time=timestamp(datetime.now(UTC)))


def queued(job_id: uuid.UUID | str, attempt: int) -> JobEvent:
    """The job waits for a worker (again, when `attempt` > 0)."""
    event = _event(job_id)
    event.queued.attempt = attempt
    return event


def started(job_id: uuid.UUID | str, attempt: int, worker_id: str) -> JobEvent:
    """A worker claimed the job."""
    event = _event(job_id)
    event.started.attempt = attempt
    event.started.worker_id = worker_id
    return event


def progress(job_id: uuid.UUID | str, attempt: int, step: int, total_steps: int) -> JobEvent:
    """The running attempt completed `step` of `total_steps` denoising steps."""
    event = _event(job_id)
    event.progress.attempt = attempt
    event.progress.progress.step = step
    event.progress.progress.total_steps = total_steps
    return event


def retrying(
    job_id: uuid.UUID | str, attempt: int, code: int, reason: str, retry_time: datetime
) -> JobEvent:
    """Attempt `attempt` failed and the job went back to the queue."""
    event = _event(job_id)
    event.retrying.attempt = attempt
    event.retrying.reason = reason
    event.retrying.error.code = code
    event.retrying.error.message = reason
    event.retrying.retry_time.CopyFrom(timestamp(retry_time))
    return event


def terminal(job: job_pb2.Job) -> JobEvent:
    """The terminal event matching the final state of `job`."""
    event = _event(job.id)
    if job.state == job_pb2.JOB_STATE_SUCCEEDED:
        event.succeeded.job.CopyFrom(job)
    elif job.state == job_pb2.JOB_STATE_FAILED:
        event.failed.job.CopyFrom(job)
    elif job.state == job_pb2.JOB_STATE_CANCELLED:
        event.cancelled.job.CopyFrom(job)
    else:
        raise ValueError(f"job {job.id} is not terminal")
    return event


# Appends a job's events to its stream, renews the stream's expiry and notifies the Events
# services, as one atomic command: one round trip and one reply to parse, whatever the
# number of events (a MULTI/EXEC pipeline took five commands and five replies per event).
# A batch holding a terminal event marks the stream ended; a batch for an ended stream is
# dropped whole and answers no ids: a stream holds at most one terminal event and nothing
# after it (a late republish, a zombie's progress), with no check-then-append race.
# KEYS: the stream, its ended marker. ARGV: max length, expiry (s), channel, job id, field,
# whether the batch ends the stream ("1"/"0"), event, event, …
APPEND_SCRIPT = """
if redis.call('EXISTS', KEYS[2]) == 1 then return {} end
local ids = {}
for i = 7, #ARGV do
  ids[#ids + 1] = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', ARGV[5], ARGV[i])
end
redis.call('EXPIRE', KEYS[1], ARGV[2])
if ARGV[6] == '1' then redis.call('SET', KEYS[2], '1', 'EX', ARGV[2]) end
redis.call('PUBLISH', ARGV[3], ARGV[4])
return ids
"""
_APPEND_SHA = hashlib.sha1(APPEND_SCRIPT.encode()).hexdigest()  # noqa: S324 - Redis's name


class EventLog:
    """Appends job events to their Redis streams."""

    def __init__(
        self,
        redis: Redis,
        prefix: str,
        *,
        max_len: int = 10_000,
        active_ttl: timedelta = timedelta(days=1),
        terminal_ttl: timedelta = timedelta(hours=6),
    ) -> None:
        self._redis = redis
        self._keys = Keys(prefix)
        self._max_len = max_len
        self._active_ttl = active_ttl
        self._terminal_ttl = terminal_ttl

    async def append(self, event: JobEvent) -> str:
        """Append `event` to its job's stream and return its event id ("" when the stream
        has already ended: see `append_many`)."""
        ids = await self.append_many([event])
        return ids[0] if ids else ""

    async def append_many(self, batch: Sequence[JobEvent]) -> list[str]:
        """Append events of one job, in order, in one round trip; their event ids. A job
        whose terminal event is in its stream takes nothing more: the batch is dropped
        and the answer is []."""
        if not batch:
            return []
        keys, args = self._script_args(batch)
        try:
            reply = self._redis.evalsha(_APPEND_SHA, len(keys), *keys, *args)
            ids = await cast(Awaitable[list[bytes]], reply)
        except NoScriptError:
            # A new or flushed server: send the script itself (it is cached from then on).
            reply = self._redis.eval(APPEND_SCRIPT, len(keys), *keys, *args)
            ids = await cast(Awaitable[list[bytes]], reply)
        return [entry.decode() if isinstance(entry, bytes) else str(entry) for entry in ids]

    async def read(
        self, job_id: uuid.UUID | str, after: str = "", count: int | None = None
    ) -> list[Entry]:
        """The job's events after event id `after` (empty: from the first), in order."""
        start = f"({after}" if after else "-"
        raw = await self._redis.xrange(self.key(job_id), start, "+", count=count)
        return decode_entries(raw)

    async def read_from(
        self, job_id: uuid.UUID | str, cursor: str, count: int
    ) -> tuple[Continuity, list[Entry]]:
        """Up to `count` events after `cursor` (an event id, or `START`), and whether they
        follow the cursor without a gap: Redis answers a read from a trimmed id with what
        is left, silently, so the cursor's own entry is looked up in the same round trip."""
        key = self.key(job_id)
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.exists(key)
            pipe.xrange(key, cursor, cursor)
            pipe.xrange(key, f"({cursor}" if cursor != START else "-", "+", count=count)
            exists, at_cursor, after = await pipe.execute()
        if not exists:
            return Continuity.GONE, []
        if cursor != START and not at_cursor:
            return Continuity.GAP, []
        return Continuity.OK, decode_entries(after)

    async def wait(
        self, job_id: uuid.UUID | str, after: str, block_s: float, count: int = 100
    ) -> list[Entry]:
        """Up to `count` events after `after` (`START`: from the first), waiting up to
        `block_s` seconds for the first of them (XREAD BLOCK); [] when none came."""
        block = max(1, int(block_s * 1000))
        answer = await self._redis.xread({self.key(job_id): after}, block=block, count=count)
        return decode_entries(answer[0][1]) if answer else []

    async def last(self, job_id: uuid.UUID | str) -> Entry | None:
        """The job's latest event, or None when its log is empty or gone."""
        [last] = await self.last_many([job_id])
        return last

    async def last_many(self, job_ids: Sequence[uuid.UUID | str]) -> list[Entry | None]:
        """The latest event of each job (None where there is none), in one round trip."""
        async with self._redis.pipeline(transaction=False) as pipe:
            for job_id in job_ids:
                pipe.xrevrange(self.key(job_id), count=1)
            replies = await pipe.execute()
        return [decode_entries(reply)[0] if reply else None for reply in replies]

    def key(self, job_id: uuid.UUID | str) -> str:
        """The Redis stream of one job's events."""
        return self._keys.events(job_id)

    def append_in(self, pipe: Pipeline, event: JobEvent) -> None:
        """Add the append of `event` to `pipe` (one command, whose reply is a list holding
        the event id, or empty for an ended stream), so the events of several jobs can
        share one round trip."""
        keys, args = self._script_args([event])
        pipe.eval(APPEND_SCRIPT, len(keys), *keys, *args)

    def _script_args(self, batch: Sequence[JobEvent]) -> tuple[list[str], list[Any]]:
        job_id = batch[0].job_id
        if any(event.job_id != job_id for event in batch):
            raise ValueError("one append carries the events of one job")
        is_terminal = any(event.WhichOneof("kind") in TERMINAL_KINDS for event in batch)
        ttl = self._terminal_ttl if is_terminal else self._active_ttl
        args: list[Any] = [
            self._max_len,
            int(ttl.total_seconds()),
            self._keys.notify_channel,
            job_id,
            EVENT_FIELD,
            "1" if is_terminal else "0",
        ]
        args += [event.SerializeToString() for event in batch]
        return [self.key(job_id), self._keys.ended(job_id)], args
