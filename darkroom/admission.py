"""Admission control: each owner's quotas, and each model's queue cap, checked before
anything is written.

- `SubmitAdmission` (Jobs): a script, by the Redis clock, checks the model's queue
  against `DARKROOM_MODEL_MAX_QUEUED`, the owner's queued jobs (over every model: its
  lines) against `max_queued`, then takes a token from its bucket (`submit_rate`,
  `submit_burst`); a refusal takes no token. Submits that fit the counts read in the last
  quarter second (plus this process's admits since) skip the script.
- `WatchAdmission` (Events): the owner's open WatchJob streams over every Events process
  against `max_watches`. Each process counts its own streams and shares the counts once a
  second under a token of its own, whose holder key it renews; a process that dies stops
  counting once that key expires.

Counts come from Redis, which caches the queue: a submit counted while another is in
flight may pass a limit by the few in flight, and right after a Redis flush the counts
start from what the reconciler has restored. When Redis cannot answer, admission lets the
request through (logged): the job row, not the queue, is the truth, and a submit must not
fail because a cache is down. A refusal is `QuotaExceededError` (RESOURCE_EXHAUSTED with
`QuotaFailure` and `RetryInfo`).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Awaitable
from datetime import timedelta
from typing import Any, cast

import redis.exceptions
import structlog
from redis.asyncio import Redis

from darkroom.config import Settings
from darkroom.errors import QuotaExceededError
from darkroom.keys import Keys
from darkroom.process import raise_if_cancelled

log = structlog.get_logger("darkroom.admission")

# How long to wait before submitting again into a full queue: about when some of it has run.
QUEUE_FULL_RETRY = timedelta(seconds=5)
# How long to wait before opening another stream when at the limit.
WATCHES_RETRY = timedelta(seconds=5)
# An Events process shares its stream counts (and renews its holder key) this often; a
# process that stops renewing stops counting after `HOLDER_TTL`.
HOLDER_RENEW = timedelta(seconds=1)
HOLDER_TTL = timedelta(seconds=10)

# KEYS: the model's queue, the owner's bucket, then the owner's line in every model's
# queue (lines hold only waiting messages).
# ARGV: model cap, owner's max queued, rate (per s), burst.
# Answers {"ok" or the limit, retry after (ms), the model's queue, the owner's queued}.
SUBMIT_SCRIPT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local model_cap, most_queued = tonumber(ARGV[1]), tonumber(ARGV[2])
local rate, burst = tonumber(ARGV[3]), tonumber(ARGV[4])
local in_model = redis.call('ZCARD', KEYS[1])
local queued = 0
for i = 3, #KEYS do queued = queued + redis.call('ZCARD', KEYS[i]) end
if model_cap > 0 and in_model >= model_cap then
  return {'model_max_queued', -1, in_model, queued}
end
if most_queued > 0 and queued >= most_queued then return {'max_queued', -1, in_model, queued} end
if rate > 0 then
  local bucket = redis.call('HMGET', KEYS[2], 'tokens', 'at')
  local tokens = tonumber(bucket[1]) or burst
  local at = tonumber(bucket[2]) or now
  tokens = math.min(burst, tokens + math.max(0, now - at) * rate / 1000)
  if tokens < 1 then
    return {'submit_rate', math.ceil((1 - tokens) * 1000 / rate), in_model, queued}
  end
  redis.call('HSET', KEYS[2], 'tokens', tostring(tokens - 1), 'at', now)
  redis.call('PEXPIRE', KEYS[2], math.ceil(burst * 1000 / rate) + 1000)
end
return {'ok', 0, in_model, queued}
"""

# Publish this process's count of an owner's streams and answer the other live
# processes' total. KEYS: the owner's watch counts. ARGV: this process's token, its count,
# the holder key prefix.
WATCH_SYNC_SCRIPT = """
if tonumber(ARGV[2]) > 0 then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
  redis.call('EXPIRE', KEYS[1], 86400)
else
  redis.call('HDEL', KEYS[1], ARGV[1])
end
local entries = redis.call('HGETALL', KEYS[1])
local others = 0
for i = 1, #entries, 2 do
  local token = entries[i]
  if token ~= ARGV[1] then
    if redis.call('EXISTS', ARGV[3] .. token) == 1 then
      others = others + tonumber(entries[i + 1])
    else
      redis.call('HDEL', KEYS[1], token)
    end
  end
end
return others
"""


class SubmitAdmission:
    """The quotas of a submit.

    The counts a script reads are trusted for `FRESH_FOR` seconds, plus this process's own
    admits since: while a submit fits them well, it costs no round trip (the submit hot
    path). A submit that would not fit, or any under a rate limit, asks Redis afresh, so
    a refusal is always decided on fresh counts.
    """

    FRESH_FOR = 0.25

    def __init__(self, redis: Redis, settings: Settings) -> None:
        self._redis = redis
        self._settings = settings
        self._keys = settings.keys
        self._script = redis.register_script(SUBMIT_SCRIPT)
        self._timeout = settings.enqueue_timeout.total_seconds()
        self._counts: dict[str, tuple[float, int]] = {}  # "model:…"/"owner:…" -> (read at, n)

    def _fits(self, owner: str, model: str, most_queued: int) -> bool:
        """Whether the counts read lately (and bumped since) leave room for one more."""
        now = time.monotonic()
        for key, limit in (
            (f"model:{model}", self._settings.model_max_queued),
            (f"owner:{owner}", most_queued),
        ):
            if not limit:
                continue
            read_at, count = self._counts.get(key, (-1.0, 0))
            if now - read_at > self.FRESH_FOR or count + 1 >= limit:
                return False
        return True

    def _count(self, owner: str, model: str, *, in_model: int, queued: int) -> None:
        now = time.monotonic()
        self._counts[f"model:{model}"] = (now, in_model)
        self._counts[f"owner:{owner}"] = (now, queued)

    def _bump(self, owner: str, model: str) -> None:
        for key in (f"model:{model}", f"owner:{owner}"):
            read_at, count = self._counts.get(key, (-1.0, 0))
            self._counts[key] = (read_at, count + 1)

    async def admit(self, owner: str, model: str) -> None:
        """Raise `QuotaExceededError` when `owner` may not submit a job for `model` now."""
        settings = self._settings
        policy = settings.policy_for(owner)
        if not (settings.model_max_queued or policy.max_queued or policy.submit_rate):
            return
        if not policy.submit_rate and self._fits(owner, model, policy.max_queued):
            self._bump(owner, model)
            return
        keys = [
            settings.queue_for(model),
            self._keys.submit_bucket(owner),
            *(Keys.owner_line(settings.queue_for(name), owner) for name in settings.models),
        ]
        args = [settings.model_max_queued, policy.max_queued, policy.submit_rate, policy.burst]
        try:
            async with asyncio.timeout(self._timeout):
                limit, retry_ms, in_model, queued = await cast(
                    Awaitable[list[Any]], self._script(keys=keys, args=args)
                )
        except (redis.exceptions.RedisError, OSError, TimeoutError) as exc:
            raise_if_cancelled()
            log.warning("admission_skipped", owner=owner, error=repr(exc))
            return
        limit = limit.decode() if isinstance(limit, bytes) else str(limit)
        self._count(owner, model, in_model=int(in_model), queued=int(queued))
        if limit == "ok":
            self._bump(owner, model)
            return
        if limit == "model_max_queued":
            raise QuotaExceededError(
                f"the queue of model {model} is full ({settings.model_max_queued:,} jobs)",
                limit=limit,
                subject=f"model:{model}",
                description=f"at most {settings.model_max_queued:,} queued jobs per model",
                retry_after=QUEUE_FULL_RETRY,
            )
        if limit == "max_queued":
            raise QuotaExceededError(
                f"you have {policy.max_queued:,} jobs waiting to start, your limit",
                limit=limit,
                subject=f"owner:{owner}",
                description=f"at most {policy.max_queued:,} queued jobs",
                retry_after=QUEUE_FULL_RETRY,
            )
        raise QuotaExceededError(
            f"you are submitting faster than your limit of {policy.submit_rate:g} jobs a second",
            limit=limit,
            subject=f"owner:{owner}",
            description=f"at most {policy.submit_rate:g} submits a second "
            f"(bursts of {policy.burst})",
            retry_after=timedelta(milliseconds=max(1, int(retry_ms))),
        )


class WatchAdmission:
    """The open-stream quota of one Events process's watchers: this process counts its own
    streams of each owner (so a refusal or a release costs nothing) and, once a
    `HOLDER_RENEW`, publishes them and learns the other processes' totals (one round trip
    for every owner). Across processes a limit may be passed by the streams opened within
    that second; within one, never."""

    def __init__(self, redis: Redis, settings: Settings) -> None:
        self._redis = redis
        self._settings = settings
        self._keys = settings.keys
        self._token = uuid.uuid4().hex
        self._holders = f"{settings.key_prefix}:watch-holder:"
        self._sync = redis.register_script(WATCH_SYNC_SCRIPT)
        self._timeout = settings.enqueue_timeout.total_seconds()
        self._mine: dict[str, int] = {}
        self._others: dict[str, int] = {}
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self._publish()
        self._task = asyncio.create_task(self._keep(), name="watch-counts")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        with contextlib.suppress(redis.exceptions.RedisError, OSError):
            await self._redis.delete(self._holders + self._token)

    async def _keep(self) -> None:
        while True:
            raise_if_cancelled()
            await asyncio.sleep(HOLDER_RENEW.total_seconds())
            try:
                await self._publish()
            except Exception as exc:  # noqa: BLE001 - counts must keep being shared
                log.warning("watch_counts_not_shared", error=repr(exc))

    async def _publish(self) -> None:
        """Renew this process's holder key, publish its counts, read the others'."""
        owners = list(self._mine)
        try:
            async with asyncio.timeout(self._timeout):
                async with self._redis.pipeline(transaction=False) as pipe:
                    ttl = int(HOLDER_TTL.total_seconds() * 1000)
                    pipe.set(self._holders + self._token, b"1", px=ttl)
                    for owner in owners:
                        await self._sync(  # queued on the pipeline
                            keys=[self._keys.watches(owner)],
                            args=[self._token, self._mine[owner], self._holders],
                            client=pipe,
                        )
                    replies = await pipe.execute()
        except (redis.exceptions.RedisError, OSError, TimeoutError) as exc:
            raise_if_cancelled()
            log.warning("watch_counts_not_shared", error=repr(exc))
            return
        self._others = {
            owner: int(others) for owner, others in zip(owners, replies[1:], strict=True)
        }
        for owner in owners:
            if not self._mine.get(owner):
                self._mine.pop(owner, None)

    async def _learn(self, owner: str) -> None:
        """The other processes' count of `owner`'s streams, read now (best effort)."""
        try:
            async with asyncio.timeout(self._timeout):
                others = await cast(
                    Awaitable[int],
                    self._sync(
                        keys=[self._keys.watches(owner)], args=[self._token, 0, self._holders]
                    ),
                )
        except (redis.exceptions.RedisError, OSError, TimeoutError) as exc:
            raise_if_cancelled()
            log.warning("admission_skipped", owner=owner, error=repr(exc))
            return
        self._others[owner] = int(others)

    @contextlib.asynccontextmanager
    async def stream(self, owner: str) -> AsyncIterator[None]:
        """Hold one of `owner`'s streams for the `async with` block, or raise
        `QuotaExceededError` at its start. The first of an owner's streams here reads the
        others' count (one round trip); the rest cost nothing."""
        most = self._settings.policy_for(owner).max_watches
        if most and not self._mine.get(owner):
            await self._learn(owner)
        mine = self._mine.get(owner, 0)
        if most and mine + self._others.get(owner, 0) >= most:
            raise QuotaExceededError(
                f"you have {most:,} WatchJob streams open, your limit",
                limit="max_watches",
                subject=f"owner:{owner}",
                description=f"at most {most:,} open WatchJob streams",
                retry_after=WATCHES_RETRY,
            )
        self._mine[owner] = mine + 1
        try:
            yield
        finally:
            self._mine[owner] -= 1
