"""The event schema and the per-job Redis stream that carries it.

Each job has one stream, `{prefix}:job:{id}:events`; an entry holds one serialized
`darkroom.v1.JobEvent` under the field `e`, and the entry id is the event id (the resume
token). Streams are trimmed approximately and expire some hours after the terminal event.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline

from darkroom.convert import timestamp
from darkroom.v1 import events_service_pb2, job_pb2

JobEvent = events_service_pb2.JobEvent
EVENT_FIELD = b"e"
TERMINAL_KINDS = frozenset({"succeeded", "failed", "cancelled"})


def stream_key(prefix: str, job_id: uuid.UUID | str) -> str:
    """The Redis stream of one job's events."""
    return f"{prefix}:job:{job_id}:events"


def notify_channel(prefix: str) -> str:
    """The pub/sub channel that carries the id of every job that has a new event.

    Events services subscribe once per process and then read only the streams of the jobs
    they watch, so the cost of an event does not grow with the number of watchers.
    """
    return f"{prefix}:events"


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
        self._prefix = prefix
        self._max_len = max_len
        self._active_ttl = active_ttl
        self._terminal_ttl = terminal_ttl

    async def append(self, event: JobEvent) -> str:
        """Append `event` to its job's stream and return its event id."""
        async with self._redis.pipeline(transaction=True) as pipe:
            self.append_in(pipe, event)
            entry_id, *_ = await pipe.execute()
        return entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)

    def append_in(self, pipe: Pipeline, event: JobEvent) -> None:
        """Add the append of `event` to `pipe` (three commands; the first replies with the
        event id), so several events can share one round trip."""
        key = stream_key(self._prefix, event.job_id)
        is_terminal = event.WhichOneof("kind") in TERMINAL_KINDS
        ttl = self._terminal_ttl if is_terminal else self._active_ttl
        pipe.xadd(
            key, {EVENT_FIELD: event.SerializeToString()}, maxlen=self._max_len, approximate=True
        )
        pipe.expire(key, ttl)
        pipe.publish(notify_channel(self._prefix), event.job_id)
