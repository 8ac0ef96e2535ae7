"""Following a job's events across streams: where a watch resumes, which events it has
already yielded, and when a stream that ended may be opened again.

The streams are read as fast as the server sends, whatever the caller's pace: gRPC would
otherwise buffer megabytes of stale progress for a slow caller, and its terminal event
would wait behind them. What the caller has not taken yet waits in an `Outbox`, where a
slow caller's progress events collapse to the latest one.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from darkroom.v1 import events_service_pb2
from darkroom_client import jobs
from darkroom_client.defaults import WATCH_STREAM_DEADLINE
from darkroom_client.errors import DeadlineExceeded, Unavailable, from_rpc_error
from darkroom_client.retry import IDEMPOTENT, RetryPolicy

# A WatchJob call: opened with (after_event_id, deadline), iterated for responses.
WatchCall = Any
JobEvent = events_service_pb2.JobEvent

# A stream the server (or gRPC on its behalf) cancelled did not end the job: resume it.
# Our own cancellations never get here: gRPC raises CancelledError for those.
RESUMABLE = IDEMPOTENT | {grpc.StatusCode.CANCELLED}
# A caller that has left an event waiting this long is slower than the job's progress.
PATIENCE = 0.1


def _event_key(event_id: str) -> tuple[int, int] | None:
    """An event id (`1718000000000-0`) as a comparable pair; None when it is not one."""
    millis, _, sequence = event_id.partition("-")
    if not (millis.isdigit() and sequence.isdigit()):
        return None
    return int(millis), int(sequence)


class WatchCursor:
    """Where a watch resumes, and which events it has already yielded."""

    def __init__(self, after_event_id: str) -> None:
        self.after = after_event_id
        self._seen = _event_key(after_event_id)

    def accept(self, event: JobEvent) -> bool:
        """Whether to yield `event` (False for a logged event yielded before); moves the
        cursor. A snapshot is always yielded and covers the events up to its id."""
        key = _event_key(event.event_id)
        if key is None:
            return True  # a snapshot taken while the event log is gone
        if self._seen is not None and key <= self._seen:
            return event.WhichOneof("kind") == "snapshot"
        self.after, self._seen = event.event_id, key
        return True


class Outbox:
    """Events received and not yet taken, in order.

    While the caller keeps up, every event waits its turn. Once the caller has been busy
    with an event for `patience` seconds it is slower than the job: a new progress event,
    or the terminal one, then replaces the progress events waiting before it, and any new
    event replaces the queue positions waiting before it (a position is news only until
    the next one, or until the job starts). Every other event always waits, in order, so
    the terminal event comes right after what the caller is busy with.
    """

    def __init__(self, patience: float) -> None:
        self._patience = patience
        self._waiting: deque[JobEvent] = deque()
        self._news = asyncio.Event()
        self._busy_since: float | None = asyncio.get_running_loop().time()
        self._closed = False
        self._error: BaseException | None = None

    def _caller_is_slow(self) -> bool:
        busy_since = self._busy_since
        now = asyncio.get_running_loop().time()
        return busy_since is not None and now - busy_since > self._patience

    def put(self, event: JobEvent) -> None:
        if self._waiting and self._caller_is_slow():
            stale = {"position"}
            if event.HasField("progress") or jobs.ends_watch(event):
                stale.add("progress")
            kept = (waiting for waiting in self._waiting if waiting.WhichOneof("kind") not in stale)
            self._waiting = deque(kept)
        self._waiting.append(event)
        self._news.set()

    def close(self, error: BaseException | None) -> None:
        """No more events; `get` raises `error` (if any) once the waiting ones are taken."""
        self._closed, self._error = True, error
        self._news.set()

    async def get(self) -> JobEvent | None:
        """The next event; None at the end."""
        self._busy_since = None
        while not self._waiting:
            if self._closed:
                if self._error is not None:
                    raise self._error
                return None
            self._news.clear()
            await self._news.wait()
        self._busy_since = asyncio.get_running_loop().time()
        return self._waiting.popleft()


async def follow(
    open_stream: Callable[[str, float], WatchCall],
    job_id: str,
    after_event_id: str,
    *,
    timeout: float | None,  # noqa: ASYNC109 - bounds every stream of the watch
    retry: RetryPolicy,
) -> AsyncIterator[JobEvent]:
    """The job's events over as many streams as it takes (see `AsyncDarkroomClient.watch`)."""
    outbox = Outbox(PATIENCE)
    reader = asyncio.create_task(
        _read(open_stream, job_id, after_event_id, outbox, timeout=timeout, retry=retry),
        name=f"darkroom-watch-{job_id}",
    )

    def finished(task: asyncio.Task[None]) -> None:
        outbox.close(asyncio.CancelledError() if task.cancelled() else task.exception())

    reader.add_done_callback(finished)
    try:
        while (event := await outbox.get()) is not None:
            yield event
    finally:
        reader.cancel()
        await asyncio.wait([reader])


async def _read(
    open_stream: Callable[[str, float], WatchCall],
    job_id: str,
    after_event_id: str,
    outbox: Outbox,
    *,
    timeout: float | None,  # noqa: ASYNC109 - bounds every stream of the watch
    retry: RetryPolicy,
) -> None:
    """Read the job's streams into `outbox` until its end, resuming them as needed."""
    loop = asyncio.get_running_loop()
    end = None if timeout is None else loop.time() + timeout
    cursor = WatchCursor(after_event_id)
    failures = 0
    while True:
        stream_deadline = WATCH_STREAM_DEADLINE
        if end is not None:
            stream_deadline = min(stream_deadline, end - loop.time())
            if stream_deadline <= 0:
                raise DeadlineExceeded(f"job {job_id} did not end within {timeout:g} s")
        started = loop.time()
        call = open_stream(cursor.after, stream_deadline)
        error: grpc.aio.AioRpcError | None = None
        try:
            async for response in call:
                failures = 0
                if not cursor.accept(response.event):
                    continue
                outbox.put(response.event)
                if jobs.ends_watch(response.event):
                    return
        except grpc.aio.AioRpcError as exc:
            error = exc
        finally:
            call.cancel()
        if (
            error is not None
            and error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            and loop.time() - started >= stream_deadline * 0.9
        ):
            continue  # this stream's deadline passed: open the next (or end, above)
        failures += 1
        await asyncio.sleep(_resume_delay(retry, job_id, error, failures))


def _resume_delay(
    retry: RetryPolicy, job_id: str, error: grpc.aio.AioRpcError | None, failures: int
) -> float:
    """How long to wait before resuming a watch whose stream ended with `error` (None:
    closed before the job ended); raises when that cannot be resumed, or too often."""
    hint = None if error is None else _retry_hint(error)
    resumable = error is None or error.code() in RESUMABLE or hint is not None
    if error is not None and (not resumable or failures >= retry.max_attempts):
        raise from_rpc_error(error) from error
    if failures >= retry.max_attempts:
        raise Unavailable(f"the watch of job {job_id} kept closing before the job ended")
    return max(retry.backoff(failures - 1), hint or 0.0)


def _retry_hint(error: grpc.aio.AioRpcError) -> float | None:
    """The seconds a RESOURCE_EXHAUSTED status asks the caller to wait (its `RetryInfo`);
    None for other statuses, and when it gives no hint."""
    if error.code() != grpc.StatusCode.RESOURCE_EXHAUSTED:
        return None
    try:
        status = rpc_status.from_call(error)
    except ValueError:  # the details disagree with the call's own code or message
        return None
    for detail in status.details if status is not None else ():
        if detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            info = error_details_pb2.RetryInfo()
            detail.Unpack(info)
            seconds: float = info.retry_delay.ToTimedelta().total_seconds()
            return max(0.0, seconds)
    return None
