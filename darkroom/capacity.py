"""Who serves each model, and how long its jobs take: the registry of live workers.

Each generator registers under its model (`Presence`): a JSON record (busy or idle, when
it started, when its current job started) that expires unless renewed every heartbeat,
and an entry in the model's set of workers scored by that expiry. A worker that stops
cleanly leaves at once; one that is killed drops out within `3 x DARKROOM_HEARTBEAT_INTERVAL`.
A Redis flush forgets everyone until their next heartbeat (seconds). `Capacity` reads it
all back, with the model's recent run times, which the life cycle records at each success.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import statistics
import time
from collections.abc import Awaitable
from dataclasses import asdict, dataclass
from datetime import timedelta
from typing import Any, cast

import structlog
from redis.asyncio import Redis

from darkroom.keys import Keys
from darkroom.process import raise_if_cancelled

log = structlog.get_logger("darkroom.capacity")

# A registration outlives this many missed heartbeats.
MISSED_HEARTBEATS = 3
# Run times kept per model (the median of these is the model's run time).
RUN_TIMES_KEPT = 100

# Register (or renew) a worker: its record, and its place in the model's set; drop those
# whose registration has expired. KEYS: the record, the model's set.
# ARGV: record (JSON), ttl (ms), worker id.
REPORT_SCRIPT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[2]), ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
return 1
"""
# The live workers of a model: their records (by the Redis clock). KEYS: the model's set.
# ARGV: the record key prefix.
LIVE_SCRIPT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], now, '+inf')
local records = {}
for _, id in ipairs(ids) do
  local record = redis.call('GET', ARGV[1] .. id)
  if record then records[#records + 1] = record end
end
return records
"""


@dataclass(frozen=True)
class WorkerRecord:
    """What a worker says of itself (times in seconds since the epoch, its own clock)."""

    worker_id: str
    model: str
    busy: bool
    started_at: float
    heartbeat_at: float
    job_started_at: float | None = None


class Presence:
    """A generator's registration: renewed every `interval`, and at once on each change."""

    def __init__(
        self, redis: Redis, keys: Keys, *, model: str, worker_id: str, interval: timedelta
    ) -> None:
        self._redis = redis
        self._keys = keys
        self._interval = interval.total_seconds()
        self._ttl_ms = int(interval.total_seconds() * MISSED_HEARTBEATS * 1000)
        self._record = WorkerRecord(worker_id, model, False, time.time(), time.time())
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        # When a heartbeat last reached the registry (monotonic), for the metrics.
        self.reported_at = time.monotonic()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    def busy(self, job_started_at: float) -> None:
        """The worker started a job (reported right away, off the caller's path)."""
        self._set(busy=True, job_started_at=job_started_at)

    def idle(self) -> None:
        """The worker is free for the next job."""
        self._set(busy=False, job_started_at=None)

    def _set(self, **changes: Any) -> None:
        self._record = WorkerRecord(**{**asdict(self._record), **changes})
        self._changed.set()

    async def stop(self) -> None:
        """Stop renewing and leave the registry (best effort: else it expires)."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        try:
            async with asyncio.timeout(2):
                async with self._redis.pipeline(transaction=True) as pipe:
                    pipe.zrem(self._keys.workers(self._record.model), self._record.worker_id)
                    pipe.delete(self._keys.worker(self._record.worker_id))
                    await pipe.execute()
        except Exception as exc:  # noqa: BLE001 - it expires on its own
            log.warning("worker_leave_failed", error=repr(exc))

    async def _run(self) -> None:
        while True:
            raise_if_cancelled()
            self._changed.clear()
            try:
                await self.report()
                self.reported_at = time.monotonic()
            except Exception as exc:  # noqa: BLE001 - a registry outage stops no worker
                log.warning("worker_report_failed", error=repr(exc))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), self._interval)

    async def report(self) -> None:
        record = WorkerRecord(**{**asdict(self._record), "heartbeat_at": time.time()})
        await cast(
            Awaitable[int],
            self._redis.eval(
                REPORT_SCRIPT,
                2,
                self._keys.worker(record.worker_id),
                self._keys.workers(record.model),
                json.dumps(asdict(record)),
                str(self._ttl_ms),
                record.worker_id,
            ),
        )


class Capacity:
    """Reads the registry and the run times."""

    def __init__(self, redis: Redis, keys: Keys) -> None:
        self._redis = redis
        self._keys = keys

    async def workers(self, model: str) -> list[WorkerRecord]:
        """The live workers of `model`, by worker id."""
        raw = await cast(
            Awaitable[list[bytes]],
            self._redis.eval(LIVE_SCRIPT, 1, self._keys.workers(model), self._keys.worker("")),
        )
        records = []
        for item in raw:
            try:
                records.append(WorkerRecord(**json.loads(item)))
            except (TypeError, ValueError):
                continue  # a record of another version: skip it, it expires
        return sorted(records, key=lambda record: record.worker_id)

    async def median_run(self, model: str) -> timedelta | None:
        """The median of the model's recent successful run times, if any."""
        raw = await cast(
            Awaitable[list[bytes]], self._redis.lrange(self._keys.run_times(model), 0, -1)
        )
        times = [int(item) for item in raw]
        return timedelta(milliseconds=statistics.median(times)) if times else None

    async def record_run(self, model: str, run: timedelta) -> None:
        """Keep one successful run time of `model` (the oldest beyond `RUN_TIMES_KEPT` go)."""
        key = self._keys.run_times(model)
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.lpush(key, max(0, int(run.total_seconds() * 1000)))
            pipe.ltrim(key, 0, RUN_TIMES_KEPT - 1)
            await pipe.execute()
