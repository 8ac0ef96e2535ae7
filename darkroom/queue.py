"""The work queue: arq on Redis, carrying a `QueueMessage` (a job id and an attempt), as JSON.

Never pickle: a queue message must not be able to run code on a GPU node. arq is imported
here (the producer's side and the message layout) and in `darkroom.consumer` (the
generator's side) only.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, ClassVar

from arq.connections import ArqRedis
from arq.constants import (
    in_progress_key_prefix,
    job_key_prefix,
    result_key_prefix,
    retry_key_prefix,
)
from arq.jobs import serialize_job
from arq.utils import timestamp_ms
from redis.asyncio import ConnectionPool
from redis.asyncio.client import Pipeline

from darkroom.config import Settings
from darkroom.keys import Keys

RUN_JOB = "run_job"
NOW = timedelta(0)
# The Redis client of the queue (arq's, with our JSON serializer): `connect` makes one.
QueueRedis = ArqRedis


class MalformedMessageError(ValueError):
    """A queue message that is not a `QueueMessage` of a version this code reads."""


@dataclass(frozen=True)
class QueueMessage:
    """What a queue message carries: a job, and the attempt count it was queued at (the
    worker claims attempt `attempt + 1`). It travels as arq's positional arguments,
    `[VERSION, job_id, attempt]`; the version lets a later format be read beside this one."""

    job_id: uuid.UUID
    attempt: int
    VERSION: ClassVar[int] = 1

    def to_args(self) -> tuple[int, str, int]:
        """The message as arq's job arguments."""
        return (self.VERSION, str(self.job_id), self.attempt)

    @classmethod
    def from_args(cls, args: Sequence[object]) -> QueueMessage:
        """The message from arq's job arguments; `MalformedMessageError` if it is not one."""
        if len(args) == 2:  # written before messages had a version: [job_id, attempt]
            args = [1, *args]
        if len(args) != 3 or args[0] != cls.VERSION:
            raise MalformedMessageError(f"not a version {cls.VERSION} message: {args!r}")
        _, job_id, attempt = args
        if not isinstance(job_id, str) or type(attempt) is not int or attempt < 0:
            raise MalformedMessageError(f"bad job id or attempt: {args!r}")
        try:
            return cls(uuid.UUID(job_id), attempt)
        except ValueError as exc:
            raise MalformedMessageError(f"bad job id: {job_id!r}") from exc


# arq's `enqueue_job` (WATCH, EXISTS, then MULTI/EXEC: three round trips) as one atomic
# script writing the same keys, payload and expiry, so that any number of enqueues can
# share one pipeline and one round trip with the events that go with them. It also pushes
# a token on the queue's wake-up list, on which idle generators block (`Keys.wake`).
# The due time (the score) is the Redis clock plus the delay: never a process's own clock,
# so a skewed enqueuer cannot delay a job, and the consumer compares by the same clock.
# KEYS: job key, result key, queue, wake-up list.
# ARGV: expiry beyond the due time (ms), payload, delay (ms), arq job id.
ENQUEUE_SCRIPT = """
if redis.call('EXISTS', KEYS[1], KEYS[2]) > 0 then return 0 end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('PSETEX', KEYS[1], tonumber(ARGV[1]) + tonumber(ARGV[3]), ARGV[2])
redis.call('ZADD', KEYS[3], now + tonumber(ARGV[3]), ARGV[4])
redis.call('LPUSH', KEYS[4], '1')
redis.call('LTRIM', KEYS[4], 0, 63)
redis.call('PEXPIRE', KEYS[4], 60000)
return 1
"""


def serialize(message: dict[str, Any]) -> bytes:
    """arq job serializer: JSON only."""
    return json.dumps(message, separators=(",", ":")).encode()


def deserialize(data: bytes) -> dict[str, Any]:
    """arq job deserializer: JSON only."""
    message = json.loads(data)
    if not isinstance(message, dict):
        raise ValueError("a queue message must be a JSON object")
    return message


def connect(settings: Settings, *, socket_timeout: float | None = None) -> ArqRedis:
    """A Redis client that speaks arq with our serializer and queue name.

    It connects lazily, so a process starts even while Redis is down. `socket_timeout`
    bounds every reply it waits for, for clients on a request path (a Redis that drops
    packets never answers); never for one that blocks on a command (BLPOP, XREAD BLOCK)
    longer than that.
    """
    pool = ConnectionPool.from_url(
        settings.redis_url,
        socket_connect_timeout=settings.enqueue_timeout.total_seconds(),
        socket_timeout=socket_timeout,
        health_check_interval=30,
    )
    return ArqRedis(
        pool,
        job_serializer=serialize,
        job_deserializer=deserialize,
        default_queue_name=settings.queue_for(settings.model_default),
    )


class JobQueue:
    """Enqueues job attempts for generators."""

    def __init__(self, redis: ArqRedis, settings: Settings) -> None:
        self._redis = redis
        self._settings = settings

    def arq_job_id(self, job_id: uuid.UUID, attempt: int) -> str:
        """One arq id per attempt, so a finished attempt never blocks the next one."""
        return self._settings.keys.message_id(job_id, attempt)

    async def enqueue(
        self, job_id: uuid.UUID, attempt: int, model: str, *, delay: timedelta = NOW
    ) -> None:
        """Queue the attempt after `attempt` of a job on its model's queue.

        An id that is already queued (or still held by a worker) counts as done.
        """
        async with self._redis.pipeline(transaction=False) as pipe:
            self.enqueue_in(pipe, job_id, attempt, model, delay=delay)
            await pipe.execute()

    def enqueue_in(
        self,
        pipe: Pipeline,
        job_id: uuid.UUID,
        attempt: int,
        model: str,
        *,
        delay: timedelta = NOW,
    ) -> None:
        """Add `enqueue` to `pipe`: the message arq's `enqueue_job` would write, atomically
        skipped when arq already has the id; the pipeline's reply is 1 when queued, 0 not."""
        arq_id = self.arq_job_id(job_id, attempt)
        now_ms = timestamp_ms()  # arq's informational enqueue time only
        delay_ms = max(0, int(delay.total_seconds() * 1000))
        args = QueueMessage(job_id, attempt).to_args()
        payload = serialize_job(RUN_JOB, args, {}, None, now_ms, serializer=serialize)
        queue_name = self._settings.queue_for(model)
        pipe.eval(
            ENQUEUE_SCRIPT,
            4,
            job_key_prefix + arq_id,
            result_key_prefix + arq_id,
            queue_name,
            Keys.wake(queue_name),
            str(self._redis.expires_extra_ms),
            payload.decode(),
            str(delay_ms),
            arq_id,
        )

    async def message_state(self, job_id: uuid.UUID, attempt: int, model: str) -> str:
        """Where the message for this attempt stands: "waiting" in the queue, "taken" by a
        worker (in progress), or "missing" (Redis lost it, or the enqueue never happened)."""
        arq_id = self.arq_job_id(job_id, attempt)
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.zscore(self._settings.queue_for(model), arq_id)
            pipe.exists(in_progress_key_prefix + arq_id)
            score, in_progress = await pipe.execute()
        if score is None:
            return "missing"
        return "taken" if in_progress else "waiting"

    async def reset(self, job_id: uuid.UUID, attempt: int, model: str) -> None:
        """Forget arq's state for this attempt's message, so it can be enqueued again.

        For a message whose worker died before claiming the job: arq would otherwise keep
        it "in progress" until its timeout passed. A second delivery is harmless: only one
        claim can win.
        """
        arq_id = self.arq_job_id(job_id, attempt)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.zrem(self._settings.queue_for(model), arq_id)
            pipe.delete(
                job_key_prefix + arq_id, in_progress_key_prefix + arq_id, retry_key_prefix + arq_id
            )
            await pipe.execute()
