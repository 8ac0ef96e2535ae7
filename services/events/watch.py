"""One WatchJob stream: a snapshot when needed, the logged events in order, then live ones.

The job's Redis stream is the watcher's buffer: a watcher reads at most `BATCH` entries at
a time, as fast as its client takes them, so a slow client holds no more than one batch in
memory, and the progress events in a backlog collapse to the latest one (latest wins). A
watcher holds no connection of its own: it sleeps on an in-process event until the
notifier wakes it.
"""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import timedelta

import redis.asyncio
import redis.exceptions
import structlog

from darkroom.convert import job_to_proto
from darkroom.errors import FieldViolation, InvalidArgumentError, NotFoundError, UnavailableError
from darkroom.events import START, TERMINAL_KINDS, Continuity, EventLog, JobEvent
from darkroom.models import JobRow
from darkroom.services.events.notifier import Notifier
from darkroom.store import JobStore

log = structlog.get_logger("darkroom.events")

BATCH = 100
# A watcher this many events behind is a slow reader: its progress events collapse.
BACKLOG = 16
EVENT_ID = re.compile(r"^\d{1,20}-\d{1,20}$")


@dataclass(frozen=True)
class WatchSettings:
    """How watchers behave when the log cannot be trusted."""

    row_poll: timedelta = timedelta(seconds=1)  # following the row while the log is gone
    idle_check: timedelta = timedelta(seconds=30)  # re-read the row after this long in silence


def parse_after(value: str) -> str:
    """Validate a resume token."""
    if value and not EVENT_ID.match(value):
        raise InvalidArgumentError(
            "the resume token is invalid",
            [FieldViolation("after_event_id", "must be an event id such as 1718000000000-0")],
        )
    return value


def coalesce(entries: list[tuple[str, JobEvent]]) -> list[tuple[str, JobEvent]]:
    """For a reader more than `BACKLOG` events behind, drop the progress events that a
    later progress event in the same batch supersedes; others get every event."""
    if len(entries) <= BACKLOG:
        return entries
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
    ) -> None:
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
        woken = True
        try:
            async with asyncio.timeout(limit.total_seconds()):
                await wake.wait()
        except TimeoutError:
            woken = False
        wake.clear()
        if self._notifier.closing:
            raise UnavailableError("the events server is shutting down: resume elsewhere")
        return woken

    async def _row(self, owner: str, job_id: uuid.UUID) -> JobRow:
        row = await self._store.get(owner, job_id)
        if row is None:
            raise NotFoundError(f"job {job_id} not found")
        return row

    async def events(self, owner: str, job_id: uuid.UUID, after: str) -> AsyncIterator[JobEvent]:
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
            async for event in self._follow(
                owner=owner, job_id=job_id, cursor=cursor, wake=wake, seen=seen
            ):
                yield event
        finally:
            self._notifier.unregister(str(job_id), wake)

    async def _follow(
        self,
        *,
        owner: str,
        job_id: uuid.UUID,
        cursor: str,
        wake: asyncio.Event,
        seen: tuple[object, ...],
    ) -> AsyncIterator[JobEvent]:
        while True:
            try:
                status, entries = await self._log.read_from(job_id, cursor, BATCH)
            except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
                log.warning("event_log_unreachable", error=repr(exc))
                status, entries = Continuity.GONE, []
            if status is not Continuity.OK:
                row, snapshot, cursor = await self._resync(owner, job_id, status, seen)
                if snapshot is not None:
                    seen = _summary(row)
                    yield snapshot
                if row.state.terminal:
                    return
                if status is Continuity.GONE:
                    await self._sleep(wake, self._settings.row_poll)
                continue
            for event_id, event in coalesce(entries):
                event.event_id = event_id
                yield event
                if event.WhichOneof("kind") in TERMINAL_KINDS:
                    return
            if entries:
                cursor = entries[-1][0]
            if len(entries) == BATCH or _take(wake):
                continue
            if not await self._sleep(wake, self._settings.idle_check):
                # A long silence: make sure the job did not end without its event.
                row = await self._row(owner, job_id)
                if row.state.terminal:
                    yield self._snapshot(row, cursor if cursor != START else "")
                    return

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


def _summary(row: JobRow) -> tuple[object, ...]:
    return (row.state, row.attempt, row.progress_step, row.cancel_requested)


def _take(wake: asyncio.Event) -> bool:
    """Whether news arrived while we were busy (and consume it)."""
    if wake.is_set():
        wake.clear()
        return True
    return False
