"""Submits written in batches: every submit that arrives while a batch is being written
joins the next one, which costs one INSERT statement and one Redis round trip in all.

Nothing waits for a batch to fill: a submit on an idle server is written at once, alone;
batches only form under load, from requests that would otherwise queue for a database
connection. Each caller still gets its own row (or its own error) back. One writer
inserts batch after batch on a connection of its own; each batch is then announced in
Redis while the writer goes on with the next.

A submit waits at most `DARKROOM_DATABASE_TIMEOUT` for its row, queueing included, and
then at most `DARKROOM_ENQUEUE_TIMEOUT` for its announce: a database out of reach answers
UNAVAILABLE within that, and a Redis out of reach still OK (the reconciler enqueues).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from dataclasses import dataclass, field

import psycopg
import structlog
from opentelemetry.trace import SpanKind
from redis.asyncio import Redis

from darkroom import events, job_metrics, tracing
from darkroom.config import Settings
from darkroom.errors import UnavailableError
from darkroom.events import EventLog
from darkroom.inserts import JobInserter
from darkroom.models import JobRecord
from darkroom.queue import JobQueue
from darkroom.validation import JobRequest

log = structlog.get_logger("darkroom.jobs")

Created = tuple[JobRecord, bool]

MAX_BATCH = 256
# When submits arrived while the last batch was being written, the server is busy: let
# the next batch gather for this long. Each batch costs about as much CPU as a few
# submits, so under load this buys throughput for at most this much latency; an idle
# server's submit never waits.
LINGER_SECONDS = 0.002


@dataclass
class _Submit:
    owner: str
    job: JobRequest
    future: asyncio.Future[Created]  # the row, once written
    taken: bool = False  # into a batch: from then on its row may be recorded
    announced: asyncio.Event = field(default_factory=asyncio.Event)


class SubmitBatcher:
    """Records submitted jobs in Postgres, then announces them (`queued` event + queue
    message) in Redis, many at a time."""

    def __init__(
        self,
        settings: Settings,
        *,
        inserter: JobInserter,
        queue: JobQueue,
        event_log: EventLog,
        redis: Redis,
        max_batch: int = MAX_BATCH,
        linger: float = LINGER_SECONDS,
    ) -> None:
        self._settings = settings
        self._inserter = inserter
        self._queue = queue
        self._event_log = event_log
        self._redis = redis
        self._max_batch = max_batch
        self._linger = linger
        self._row_timeout = settings.database_timeout.total_seconds()
        self._waiting: list[_Submit] = []
        self._writer: asyncio.Task[None] | None = None
        self._announcing: set[asyncio.Task[None]] = set()

    async def submit(self, owner: str, job: JobRequest) -> Created:
        """Insert a QUEUED job (or find the one already recorded for its request_id) and,
        when it is new, announce it. Returns the row and whether this call created it.

        A caller that goes away before its batch is written (deadline, cancel) is left out
        of it, and so is one whose row is not written within `DARKROOM_DATABASE_TIMEOUT`
        (UNAVAILABLE); once written, a job is announced whether or not its caller still
        waits. The announce is bounded by `DARKROOM_ENQUEUE_TIMEOUT`.
        """
        submit = _Submit(owner, job, asyncio.get_running_loop().create_future())
        self._waiting.append(submit)
        if self._writer is None:
            self._writer = asyncio.create_task(self._write())
        try:
            # On timeout (or our caller's cancel) the future is cancelled: a submit still
            # waiting is then left out of every batch.
            row = await asyncio.wait_for(submit.future, self._row_timeout)
        except TimeoutError:
            raise _unavailable(submit, self._row_timeout) from None
        await submit.announced.wait()
        return row

    async def close(self) -> None:
        """Finish what was accepted (call after the server stopped taking calls), then
        release the writer's connection."""
        while self._writer is not None or self._announcing:
            await asyncio.gather(
                *[task for task in [self._writer, *self._announcing] if task is not None],
                return_exceptions=True,
            )
        await self._inserter.close()

    async def _write(self) -> None:
        batch: list[_Submit] = []
        busy = False
        try:
            while self._waiting:
                if busy:
                    await asyncio.sleep(self._linger)
                busy = True
                batch = self._waiting[: self._max_batch]
                del self._waiting[: self._max_batch]
                batch = [submit for submit in batch if not submit.future.done()]
                for submit in batch:
                    submit.taken = True
                if batch:
                    await self._write_batch(batch)
        except BaseException as exc:
            # Only cancellation (shutdown) gets here: nobody may wait forever.
            for submit in [*batch, *self._waiting]:
                _fail(submit, exc)
            self._waiting.clear()
            raise
        finally:
            self._writer = None

    async def _write_batch(self, batch: Sequence[_Submit]) -> None:
        try:
            with _insert_span(batch):
                results = await self._inserter.insert(
                    [(submit.owner, submit.job) for submit in batch], self._settings.max_attempts
                )
        except Exception as exc:  # noqa: BLE001 - handed to each caller, or retried alone
            if len(batch) == 1 or not _about_the_rows(exc):
                for submit in batch:
                    timed_out = isinstance(exc, TimeoutError)
                    _fail(submit, _unavailable(submit, self._row_timeout) if timed_out else exc)
                return
            # One bad request, or a deadlock with a concurrent transaction over the same
            # request ids, must not fail the rest: write each alone, with its own outcome.
            log.warning("submit_batch_split", size=len(batch), error=repr(exc))
            for submit in batch:
                if not submit.future.done():  # its caller may have gone meanwhile
                    await self._write_batch([submit])
            return
        for submit, result in zip(batch, results, strict=True):
            if not submit.future.done():
                submit.future.set_result(result)
        task = asyncio.create_task(self._announce_batch(batch, results))
        self._announcing.add(task)
        task.add_done_callback(self._announcing.discard)

    async def _announce_batch(self, batch: Sequence[_Submit], results: Sequence[Created]) -> None:
        """Announce the new rows, then let their callers answer."""
        try:
            rows = [row for row, created in results if created]
            job_metrics.submitted(rows)
            await self._announce(rows)
        finally:
            for submit in batch:
                submit.announced.set()

    async def _announce(self, rows: Sequence[JobRecord]) -> None:
        """Publish `queued` and enqueue the first attempt of each job, best effort, in one
        round trip (each job's event goes before its message, so `queued` always precedes
        `started`).

        The committed rows are the truth: when Redis fails here the submits still succeed
        and the reconciler enqueues the jobs later.
        """
        if not rows:
            return
        try:
            async with asyncio.timeout(self._settings.enqueue_timeout.total_seconds()):
                async with self._redis.pipeline(transaction=False) as pipe:
                    for row in rows:
                        self._event_log.append_in(pipe, events.queued(row.id, row.attempt))
                        self._queue.enqueue_row(pipe, row)
                    await pipe.execute()
        except Exception as exc:  # noqa: BLE001 - any Redis failure is left to the reconciler
            log.warning("enqueue_deferred", jobs=[str(row.id) for row in rows], error=repr(exc))


def _insert_span(batch: Sequence[_Submit]) -> contextlib.AbstractContextManager[object]:
    """With tracing on, the batch's insert as one span linked to every submit in it."""
    if not tracing.enabled():
        return contextlib.nullcontext()
    # Only sampled submits carry a traceparent: a batch of none makes no span.
    links = [link for submit in batch for link in tracing.linked(submit.job.traceparent)]
    if not links:
        return contextlib.nullcontext()
    return tracing.span(
        "darkroom.submit.insert",
        kind=SpanKind.CLIENT,
        links=links,
        attributes={"db.system": "postgresql", "darkroom.batch_size": len(batch)},
        root=True,
    )


def _about_the_rows(exc: Exception) -> bool:
    """Whether the statement failed because of what it wrote (bad data, a deadlock), not
    because the database is out of reach (then every row would fail the same way)."""
    if not isinstance(exc, psycopg.Error):
        return False
    # SQLSTATE class 40: the transaction was rolled back (deadlock, serialization).
    if (exc.sqlstate or "").startswith("40"):
        return True
    return not isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError)


def _unavailable(submit: _Submit, seconds: float) -> UnavailableError:
    """The error of a submit whose row was not written in time: "not recorded" only when
    it is certain (its insert never started), else "retry with the same request_id"."""
    request_id = str(submit.job.request_id)
    if not submit.taken:
        message = f"the job database did not answer within {seconds:g} s; nothing was recorded"
    else:
        message = (
            f"the job database did not answer within {seconds:g} s; the job may have been "
            "recorded: submit again with the same request_id to get it"
        )
    return UnavailableError(message, metadata={"request_id": request_id})


def _fail(submit: _Submit, exc: BaseException) -> None:
    if submit.future.done():
        return
    if isinstance(exc, asyncio.CancelledError):
        submit.future.cancel()
    else:
        submit.future.set_exception(exc)
