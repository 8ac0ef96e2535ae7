"""The work queue: arq on Redis, carrying a `QueueMessage` (a job id and an attempt), as JSON.

Never pickle: a queue message must not be able to run code on a GPU node. arq is imported
here (the producer's side and the message layout) and in `darkroom.consumer` (the
generator's side) only.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, ClassVar, cast

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

from darkroom import scheduling
from darkroom.config import Settings
from darkroom.keys import Keys
from darkroom.models import JobRecord

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
# Beside arq's layout it files the message in its owner's line of the queue, in start
# order (`darkroom.scheduling.order`), gives a new owner its turn from the queue's
# virtual clock (an owner that comes back catches up to it: ZADD GT), records the
# owner's policy for the take script, and drops what the previous attempt's message left
# behind (it can never claim the job again).
# KEYS: job key, result key, queue, wake-up list, turns, clock, the owner's line, message
# owners, policies, deliveries, the owner's running set.
# ARGV: expiry beyond the due time (ms), payload, delay (ms), arq job id, owner, priority
# band (ms), created (ms), policy, previous attempt's message id ("" if none).
ENQUEUE_SCRIPT = """
if redis.call('EXISTS', KEYS[1], KEYS[2]) > 0 then return 0 end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local due = now + tonumber(ARGV[3])
redis.call('PSETEX', KEYS[1], tonumber(ARGV[1]) + tonumber(ARGV[3]), ARGV[2])
redis.call('ZADD', KEYS[3], due, ARGV[4])
local order = string.format('%.0f', tonumber(ARGV[6]) + math.max(tonumber(ARGV[7]), due))
redis.call('ZADD', KEYS[7], order, ARGV[4])
redis.call('HSET', KEYS[8], ARGV[4], order .. ' ' .. ARGV[5])
redis.call('ZADD', KEYS[5], 'GT', tonumber(redis.call('GET', KEYS[6]) or '0'), ARGV[5])
redis.call('HSET', KEYS[9], ARGV[5], ARGV[8])
if ARGV[9] ~= '' then
  redis.call('ZREM', KEYS[3], ARGV[9])
  redis.call('ZREM', KEYS[7], ARGV[9])
  redis.call('HDEL', KEYS[8], ARGV[9])
  redis.call('HDEL', KEYS[10], ARGV[9])
  redis.call('ZREM', KEYS[11], ARGV[9])
end
redis.call('LPUSH', KEYS[4], '1')
redis.call('LTRIM', KEYS[4], 0, 63)
redis.call('PEXPIRE', KEYS[4], 60000)
return 1
"""
# Forget a message everywhere (it ran, was set aside, or is being re-enqueued): arq's
# keys, the queue, its owner's line and running set, its delivery count; an owner parked
# at its running limit takes its turns again.
# KEYS: queue, message owners, deliveries, turns, parked. ARGV: message id, owner-line
# prefix, running prefix, then arq's key prefixes to delete (in progress, retry, job).
FORGET_SCRIPT = """
local value = redis.call('HGET', KEYS[2], ARGV[1])
if value then
  local owner = string.match(value, '^%d+ (.*)$')
  redis.call('ZREM', ARGV[2] .. owner, ARGV[1])
  redis.call('ZREM', ARGV[3] .. owner, ARGV[1])
  redis.call('HDEL', KEYS[2], ARGV[1])
  local vtime = redis.call('ZSCORE', KEYS[5], owner)
  if vtime then
    redis.call('ZREM', KEYS[5], owner)
    redis.call('ZADD', KEYS[4], 'GT', vtime, owner)
  end
end
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[3], ARGV[1])
for i = 4, #ARGV do redis.call('DEL', ARGV[i] .. ARGV[1]) end
return 1
"""
# Hand a taken message back: into its owner's line again, out of its running set, no
# longer in progress; `uncount` also takes back the delivery it was counted as.
# KEYS: message owners, deliveries, turns, parked, clock. ARGV: message id, owner-line
# prefix, running prefix, in-progress prefix, uncount ("1" or "0").
RELEASE_SCRIPT = """
local value = redis.call('HGET', KEYS[1], ARGV[1])
if value then
  local order, owner = string.match(value, '^(%d+) (.*)$')
  redis.call('ZREM', ARGV[3] .. owner, ARGV[1])
  redis.call('ZADD', ARGV[2] .. owner, order, ARGV[1])
  local vtime = redis.call('ZSCORE', KEYS[4], owner)
  if vtime then redis.call('ZREM', KEYS[4], owner) end
  redis.call('ZADD', KEYS[3], 'GT', vtime or redis.call('GET', KEYS[5]) or '0', owner)
end
redis.call('DEL', ARGV[4] .. ARGV[1])
if ARGV[5] == '1' then redis.call('HINCRBY', KEYS[2], ARGV[1], -1) end
return 1
"""


def in_progress_key(message_id: str) -> str:
    """The key that marks a message as taken by a worker (arq's layout)."""
    return in_progress_key_prefix + message_id


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
        self,
        job_id: uuid.UUID,
        attempt: int,
        model: str,
        *,
        owner: str = "",
        priority: int = 0,
        delay: timedelta = NOW,
    ) -> None:
        """Queue the attempt after `attempt` of a job on its model's queue, in `owner`'s
        line at `priority` (see `darkroom.scheduling`).

        An id that is already queued (or still held by a worker) counts as done.
        """
        async with self._redis.pipeline(transaction=False) as pipe:
            self.enqueue_in(
                pipe, job_id, attempt, model, owner=owner, priority=priority, delay=delay
            )
            await pipe.execute()

    def enqueue_row(self, pipe: Pipeline, row: JobRecord, *, delay: timedelta = NOW) -> None:
        """`enqueue_in` for a QUEUED row's next attempt, in its owner's line."""
        self.enqueue_in(
            pipe,
            row.id,
            row.attempt,
            row.model,
            owner=row.owner,
            priority=row.priority,
            delay=delay,
        )

    def enqueue_in(
        self,
        pipe: Pipeline,
        job_id: uuid.UUID,
        attempt: int,
        model: str,
        *,
        owner: str = "",
        priority: int = 0,
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
        keys = self._settings.keys
        previous = self.arq_job_id(job_id, attempt - 1) if attempt > 0 else ""
        pipe.eval(
            ENQUEUE_SCRIPT,
            11,
            job_key_prefix + arq_id,
            result_key_prefix + arq_id,
            queue_name,
            Keys.wake(queue_name),
            Keys.turns(queue_name),
            Keys.clock(queue_name),
            Keys.owner_line(queue_name, owner),
            Keys.message_owners(queue_name),
            keys.policies,
            Keys.deliveries(queue_name),
            keys.running(owner),
            str(self._redis.expires_extra_ms),
            payload.decode(),
            str(delay_ms),
            arq_id,
            owner,
            str(scheduling.band(priority)),
            str(scheduling.created_ms(job_id)),
            scheduling.encode_policy(self._settings.policy_for(owner)),
            previous,
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

    async def restore(self, rows: Sequence[JobRecord]) -> int:
        """Enqueue every QUEUED row in `rows` whose message Redis has lost (none waiting,
        none taken), in two round trips; how many it enqueued. Each lands in its owner's
        line by the row's own priority and age, so the fair order is rebuilt from rows."""
        async with self._redis.pipeline(transaction=False) as pipe:
            for row in rows:
                arq_id = self.arq_job_id(row.id, row.attempt)
                pipe.zscore(self._settings.queue_for(row.model), arq_id)
                pipe.exists(in_progress_key_prefix + arq_id)
            replies = await pipe.execute()
        lost = [
            row
            for row, score, taken in zip(rows, replies[::2], replies[1::2], strict=True)
            if score is None and not taken
        ]
        if lost:
            async with self._redis.pipeline(transaction=False) as pipe:
                for row in lost:
                    self.enqueue_row(pipe, row)
                await pipe.execute()
        return len(lost)

    async def intact(self) -> bool:
        """Whether Redis still holds what `mark_intact` wrote (a flush or a new Redis
        loses it: then every queued row must be looked at, not only the oldest)."""
        return bool(await self._redis.exists(self._settings.keys.queues_intact))

    async def mark_intact(self) -> None:
        await self._redis.set(self._settings.keys.queues_intact, "1")

    async def reset(self, job_id: uuid.UUID, attempt: int, model: str) -> None:
        """Forget arq's state for this attempt's message, so it can be enqueued again.

        For a message whose worker died before claiming the job: arq would otherwise keep
        it "in progress" until its timeout passed. A second delivery is harmless: only one
        claim can win.
        """
        await forget(
            self._redis,
            self._settings.keys,
            self._settings.queue_for(model),
            self.arq_job_id(job_id, attempt),
            [in_progress_key_prefix, retry_key_prefix, job_key_prefix],
        )


async def forget(
    redis: ArqRedis, keys: Keys, queue: str, message_id: str, key_prefixes: Sequence[str]
) -> None:
    """Remove a message from a queue and its owner's line and running set, and delete
    its keys under `key_prefixes` (arq's in-progress, retry, job prefixes)."""
    await cast(
        Awaitable[int],
        redis.eval(
            FORGET_SCRIPT,
            5,
            queue,
            Keys.message_owners(queue),
            Keys.deliveries(queue),
            Keys.turns(queue),
            Keys.parked(queue),
            message_id,
            Keys.owner_lines(queue),
            keys.running_prefix,
            *key_prefixes,
        ),
    )


async def release(
    redis: ArqRedis, keys: Keys, queue: str, message_id: str, *, uncount: bool
) -> None:
    """Hand a taken message back to its queue at once (for this or another worker)."""
    await cast(
        Awaitable[int],
        redis.eval(
            RELEASE_SCRIPT,
            5,
            Keys.message_owners(queue),
            Keys.deliveries(queue),
            Keys.turns(queue),
            Keys.parked(queue),
            Keys.clock(queue),
            message_id,
            Keys.owner_lines(queue),
            keys.running_prefix,
            in_progress_key_prefix,
            "1" if uncount else "0",
        ),
    )
