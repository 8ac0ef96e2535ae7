"""One WatchJob stream: a snapshot when needed, the logged events in order, then live ones.

The job's Redis stream is the watcher's buffer: a watcher reads at most `BATCH` entries at
a time, as fast as its client takes them, so a slow client holds no more than one batch in
memory. A watcher that falls behind (a read finds more than `BACKLOG` entries, or a write
takes longer than `SLOW_WRITE`: gRPC flow control says the client is not reading) reads
on to the end of the log and sends only the latest progress event and every state change,
in order, so its terminal event is not queued behind stale progress. A watcher holds no
connection of its own: it sleeps on an in-process event until the notifier wakes it.

gRPC hides a slow reader for a long time: a write completes as soon as the client's
HTTP/2 window takes it, and a client's transport grows that window (BDP probing) to
megabytes, tens of thousands of progress events, whether or not its application reads.
Readers that must see the end promptly read eagerly, as the Python client does.
"""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import redis.asyncio
import redis.exceptions
import structlog

from darkroom import db
from darkroom.convert import job_to_proto
from darkroom.errors import FieldViolation, InvalidArgumentError, NotFoundError, UnavailableError
from darkroom.events import START, TERMINAL_KINDS, Continuity, Entry, EventLog, JobEvent
from darkroom.models import JobRow, State
from darkroom.positions import PositionBoard, QueuedJob, changed
from darkroom.process import raise_if_cancelled
from darkroom.services.events.notifier import Notifier
from darkroom.store import JobStore
from darkroom.v1 import job_pb2

log = structlog.get_logger("darkroom.events")

BATCH = 100
# A watcher this many events behind is a slow reader: its progress events collapse.
BACKLOG = 16
# A write still pending after this long means the client's flow-control window is full.
SLOW_WRITE = 0.25
EVENT_ID = re.compile(r"^(\d{1,20})-(\d{1,20})$")
# Redis event ids are two unsigned 64-bit numbers; a larger one fails every read.
MAX_ID_PART = 2**64 - 1


@dataclass(frozen=True)
class WatchSettings:
    """How watchers behave when the log cannot be trusted."""

    row_poll: timedelta = timedelta(seconds=1)  # following the row while the log is gone
    idle_check: timedelta = timedelta(seconds=30)  # re-read the row after this long in silence
    # A row read that takes longer ends the stream UNAVAILABLE (the client resumes).
    database_timeout: timedelta = timedelta(seconds=4)


def parse_after(value: str) -> str:
    """Validate a resume token."""
    if not value:
        return value
    match = EVENT_ID.match(value)
    parts = tuple(int(part) for part in match.groups()) if match else ()
    # The very last id has nothing after it: Redis refuses to read from it.
    if not parts or max(parts) > MAX_ID_PART or parts == (MAX_ID_PART, MAX_ID_PART):
        raise InvalidArgumentError(
            "the resume token is invalid",
            [
                FieldViolation(
                    "after_event_id",
                    "must be an event id such as 1718000000000-0 (two numbers below 2^64)",
                )
            ],
        )
    return value


def coalesce(entries: list[Entry]) -> list[Entry]:
    """Every event but the progress events that a later progress event supersedes."""
    last_progress = max(
        (i for i, (_, event) in enumerate(entries) if event.WhichOneof("kind") == "progress"),
        default=-1,
    )
    return [
        (event_id, event)
        for i, (event_id, event) in enumerate(entries)
        if event.WhichOneof("kind") != "progress" or i == last_progress
    ]


class Watch:
    """Streams one job's events to one client."""

    def __init__(
        self,
        *,
        store: JobStore,
        redis: redis.asyncio.Redis,
        notifier: Notifier,
        key_prefix: str,
        settings: WatchSettings,
        url_for: Callable[[str], str] | None = None,
        positions: PositionBoard | None = None,
    ) -> None:
        self._positions = positions
        self._store = store
        self._log = EventLog(redis, key_prefix)
        self._notifier = notifier
        self._settings = settings
        self._url_for = url_for

    def _snapshot(self, row: JobRow, event_id: str) -> JobEvent:
        event = JobEvent(job_id=str(row.id), event_id=event_id)
        event.time.GetCurrentTime()
        event.snapshot.job.CopyFrom(job_to_proto(row, self._url_for))
        return event

    async def _last(self, job_id: uuid.UUID) -> tuple[str, bool]:
        """The id of the last logged event ("" without a log), and whether it is terminal."""
        last = await self._log.last(job_id)
        if last is None:
            return "", False
        return last[0], last[1].WhichOneof("kind") in TERMINAL_KINDS

    async def _sleep(self, wake: asyncio.Event, limit: timedelta) -> bool:
        """Wait for news; False when `limit` passed in silence."""
        # Checked before waiting too: the shutdown's wake-up may have been consumed already.
        if self._notifier.closing:
            raise UnavailableError("the events server is shutting down: resume elsewhere")
        # A caller that left while we read Redis or wrote to it may have had its
        # cancellation swallowed on the way (see `raise_if_cancelled`): do not wait for
        # news nobody will read.
        raise_if_cancelled()
        woken = True
        try:
            async with asyncio.timeout(limit.total_seconds()):
                await wake.wait()
        except TimeoutError:
            raise_if_cancelled()  # the timeout may have taken our cancellation for its own
            woken = False
        wake.clear()
        if self._notifier.closing:
            raise UnavailableError("the events server is shutting down: resume elsewhere")
        return woken

    async def _row(self, owner: str, job_id: uuid.UUID) -> JobRow:
        timeout = self._settings.database_timeout.total_seconds()
        row = await db.bounded(self._store.get(owner, job_id), timeout)
        if row is None:
            raise NotFoundError(f"job {job_id} not found")
        return row

    async def events(
        self, owner: str, job_id: uuid.UUID, after: str
    ) -> AsyncGenerator[JobEvent, None]:
        """The events of `owner`'s job `job_id` after `after`, ending with its terminal."""
        # Listen before the first read, so nothing published in between is missed.
        wake = self._notifier.register(str(job_id))
        try:
            last, logged_terminal = await self._last(job_id)
            row = await self._row(owner, job_id)
            if row.state.terminal and not (after and logged_terminal):
                # A finished job whose log cannot replay what follows `after`.
                yield self._snapshot(row, last)
                return
            cursor = after
            seen: tuple[object, ...] = ()
            if not after:
                yield self._snapshot(row, last)
                cursor, seen = last or START, _summary(row)
            queue = Positions(self._positions, row, wake)
            try:
                async for event in self._follow(
                    owner=owner, job_id=job_id, cursor=cursor, wake=wake, seen=seen, queue=queue
                ):
                    yield event
            finally:
                queue.close()
        finally:
            self._notifier.unregister(str(job_id), wake)

    async def _follow(  # noqa: PLR0912 - one loop of one stream's states reads best whole
        self,
        *,
        owner: str,
        job_id: uuid.UUID,
        cursor: str,
        wake: asyncio.Event,
        seen: tuple[object, ...],
        queue: Positions,
    ) -> AsyncIterator[JobEvent]:
        clock = asyncio.get_running_loop().time
        behind = False
        while True:
            raise_if_cancelled()
            try:
                status, entries, more = await self._read(job_id, cursor, behind=behind)
            except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
                raise_if_cancelled()  # a cancellation the read turned into an error
                log.warning("event_log_unreachable", error=repr(exc))
                status, entries, more = Continuity.GONE, [], False
            if status is not Continuity.OK:
                row, snapshot, cursor = await self._resync(owner, job_id, status, seen)
                if snapshot is not None:
                    seen = _summary(row)
                    queue.saw(snapshot)
                    yield snapshot
                if row.state.terminal:
                    return
                if status is Continuity.GONE:
                    await self._sleep(wake, self._settings.row_poll)
                continue
            behind = False
            for event_id, event in entries:
                event.event_id = event_id
                queue.saw(event)
                began = clock()
                yield event
                if event.WhichOneof("kind") in TERMINAL_KINDS:
                    return
                cursor = event_id
                if clock() - began > SLOW_WRITE:
                    # The client is not reading: what is left of this batch, and whatever
                    # came since, is read afresh and collapsed.
                    behind = more = True
                    break
            if more or _take(wake):
                continue
            position = queue.update()
            if position is not None:
                yield position
            if not await self._sleep(wake, self._settings.idle_check):
                # A long silence: make sure the job did not end without its event.
                row = await self._row(owner, job_id)
                if row.state.terminal:
                    yield self._snapshot(row, cursor if cursor != START else "")
                    return

    async def _read(
        self, job_id: uuid.UUID, cursor: str, *, behind: bool
    ) -> tuple[Continuity, list[Entry], bool]:
        """The entries after `cursor`, and whether more may follow at once.

        A watcher `behind` (or finding more than `BACKLOG` entries) reads on to the end of
        the log, a batch at a time, keeping every state change and the latest progress.
        """
        status, entries = await self._log.read_from(job_id, cursor, BATCH)
        more = len(entries) == BATCH
        if status is not Continuity.OK or not (behind or len(entries) > BACKLOG):
            return status, entries, more
        kept = coalesce(entries)
        while more and kept[-1][1].WhichOneof("kind") not in TERMINAL_KINDS:
            status, entries = await self._log.read_from(job_id, kept[-1][0], BATCH)
            if status is not Continuity.OK:
                break  # trimmed or gone meanwhile: the next read from `kept` finds out
            more = len(entries) == BATCH
            kept = coalesce(kept + entries)
        return Continuity.OK, kept, False

    async def _resync(
        self, owner: str, job_id: uuid.UUID, status: Continuity, seen: tuple[object, ...]
    ) -> tuple[JobRow, JobEvent | None, str]:
        """After a gap, or while the log is gone: a snapshot from the row, and a new cursor.

        While the log is gone the watcher follows the row, and a snapshot goes out only
        when the row changed since the last one.
        """
        row = await self._row(owner, job_id)
        if status is Continuity.GAP:
            last = (await self._last(job_id))[0]
            return row, self._snapshot(row, last), last or START
        changed = _summary(row) != seen
        return row, self._snapshot(row, "") if changed else None, START


class Positions:
    """A watcher's view of its job's place in the queue: while the job is queued (as its
    row, then its events, say), it is on the process's `PositionBoard`, which wakes the
    watcher when the position changed; then a `position` event goes out."""

    def __init__(self, board: PositionBoard | None, row: JobRow, wake: asyncio.Event) -> None:
        self._board = board
        self._wake = wake
        self._owner, self._model = row.owner, row.model
        self._job: QueuedJob | None = None
        self._last: job_pb2.QueueStatus | None = None
        if row.state == State.QUEUED:
            self._queued(QueuedJob.of(row))

    def saw(self, event: JobEvent) -> None:
        """Follow the job's state through its events."""
        kind = event.WhichOneof("kind")
        job_id = uuid.UUID(event.job_id)
        if kind == "queued":
            self._queued(QueuedJob(job_id, self._owner, self._model, event.queued.attempt, _now()))
        elif kind == "retrying":
            retry = event.retrying
            run_after = retry.retry_time.ToDatetime(UTC) if retry.HasField("retry_time") else _now()
            self._queued(QueuedJob(job_id, self._owner, self._model, retry.attempt, run_after))
        elif kind == "snapshot":
            job = event.snapshot.job
            if job.state != job_pb2.JOB_STATE_QUEUED:
                self.close()
            else:
                self._queued(QueuedJob(job_id, self._owner, self._model, job.attempt, _now()))
        elif kind is not None and kind != "position":
            self.close()  # started, progress or terminal: no longer queued

    def _queued(self, job: QueuedJob) -> None:
        if self._job is None or self._job.attempt != job.attempt:
            self._last = None
        self._job = job
        if self._board is not None:
            self._board.watch(job, self._wake)

    def close(self) -> None:
        if self._job is not None and self._board is not None:
            self._board.unwatch(self._job.id, self._wake)
        self._job = None

    def update(self) -> JobEvent | None:
        """A `position` event, when the position changed since the last one sent: it
        costs nothing, the board has looked already (and wakes the watcher when it did)."""
        job, board = self._job, self._board
        if job is None or board is None:
            return None
        status = board.latest(job.id)
        if status is None or not changed(self._last, status):  # (None: not looked at yet)
            return None
        self._last = status
        event = JobEvent(job_id=str(job.id))
        event.time.GetCurrentTime()
        event.position.queue.CopyFrom(status)
        return event


def _now() -> datetime:
    return datetime.now(UTC)


def _summary(row: JobRow) -> tuple[object, ...]:
    return (row.state, row.attempt, row.progress_step, row.cancel_requested)


def _take(wake: asyncio.Event) -> bool:
    """Whether news arrived while we were busy (and consume it)."""
    if wake.is_set():
        wake.clear()
        return True
    return False
