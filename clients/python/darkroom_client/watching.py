"""Following a job's events across streams: where a watch resumes, which events it has
already yielded, and when a stream that ended may be opened again."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc

from darkroom.v1 import events_service_pb2
from darkroom_client import jobs
from darkroom_client.defaults import WATCH_STREAM_DEADLINE
from darkroom_client.errors import DeadlineExceeded, Unavailable, from_rpc_error
from darkroom_client.retry import IDEMPOTENT, RetryPolicy

# A WatchJob call: opened with (after_event_id, deadline), iterated for responses.
WatchCall = Any


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

    def accept(self, event: events_service_pb2.JobEvent) -> bool:
        """Whether to yield `event` (False for a logged event yielded before); moves the
        cursor. A snapshot is always yielded and covers the events up to its id."""
        key = _event_key(event.event_id)
        if key is None:
            return True  # a snapshot taken while the event log is gone
        if self._seen is not None and key <= self._seen:
            return event.WhichOneof("kind") == "snapshot"
        self.after, self._seen = event.event_id, key
        return True


async def follow(
    open_stream: Callable[[str, float], WatchCall],
    job_id: str,
    after_event_id: str,
    *,
    timeout: float | None,  # noqa: ASYNC109 - bounds every stream of the watch
    retry: RetryPolicy,
) -> AsyncIterator[events_service_pb2.JobEvent]:
    """The job's events over as many streams as it takes (see `AsyncDarkroomClient.watch`)."""
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
                yield response.event
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
    if error is not None and (error.code() not in IDEMPOTENT or failures >= retry.max_attempts):
        raise from_rpc_error(error) from error
    if failures >= retry.max_attempts:
        raise Unavailable(f"the watch of job {job_id} kept closing before the job ended")
    return retry.backoff(failures - 1)
