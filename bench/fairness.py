"""The fair queue at depth (part of section 2): the take with a 100,000-job backlog across
1,000 owners against the FIFO take it replaced, an idle worker's pickup beside that
backlog, and what a queue position costs."""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import Awaitable
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import uuid_utils.compat as uuid_utils

from darkroom import queue
from darkroom.config import Settings
from darkroom.consumer import Consumer
from darkroom.positions import QueuedJob, QueueView

MODEL = "tiny-sd"
OWNERS = 1_000

# The take script this project used before fair share (one FIFO set per model), kept
# here as the baseline: first due id that no one holds, junk removed.
# KEYS: the queue. ARGV: in-progress prefix, message prefix, hold (ms), batch.
FIFO_TAKE_SCRIPT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[4]))
for _, id in ipairs(ids) do
  if redis.call('EXISTS', ARGV[1] .. id) == 0 then
    local message = redis.call('GET', ARGV[2] .. id)
    if message then
      redis.call('PSETEX', ARGV[1] .. id, ARGV[3], '1')
      return {id, message}
    end
    redis.call('ZREM', KEYS[1], id)
  end
end
return {}
"""


async def fill(settings: Settings, backlog: int, *, delay: timedelta = timedelta(0)) -> list[Any]:
    """Enqueue `backlog` messages of fake jobs, spread over `OWNERS` owners; their
    (job id, owner) pairs."""
    redis = queue.connect(settings)
    jobs = queue.JobQueue(redis, settings)
    made = []
    try:
        for start in range(0, backlog, 2_000):
            async with redis.pipeline(transaction=False) as pipe:
                for index in range(start, min(backlog, start + 2_000)):
                    job_id, owner = uuid_utils.uuid7(), f"owner-{index % OWNERS:04d}"
                    jobs.enqueue_in(pipe, job_id, 0, MODEL, owner=owner, delay=delay)
                    made.append((job_id, owner))
                await pipe.execute()
    finally:
        await redis.aclose()
        await redis.connection_pool.disconnect()
    return made


async def fair_takes(settings: Settings, samples: int) -> list[float]:
    """Seconds per take (script round trip, then the finish) on a filled fair queue."""
    redis = queue.connect(settings)

    async def nothing(message: queue.QueueMessage) -> None: ...

    consumer = Consumer(
        redis,
        settings.queue_for(MODEL),
        nothing,
        hold=timedelta(minutes=5),
        poll_delay=timedelta(seconds=1),
        keys=settings.keys,
    )
    times = []
    try:
        for _ in range(samples):
            began = time.perf_counter()
            taken = await consumer._take()  # (the take alone, measured)
            times.append(time.perf_counter() - began)
            assert taken is not None
            await consumer._finish(taken.message_id)
    finally:
        await redis.aclose()
        await redis.connection_pool.disconnect()
    return times


async def fifo_takes(settings: Settings, backlog: int, samples: int) -> list[float]:
    """Seconds per take of the FIFO script with `backlog` due messages in one set."""
    redis = queue.connect(settings)
    name = settings.queue_for(MODEL) + ":fifo"
    try:
        for start in range(0, backlog, 5_000):
            async with redis.pipeline(transaction=False) as pipe:
                for index in range(start, min(backlog, start + 5_000)):
                    message_id = f"{settings.key_prefix}:fifo:{index}"
                    pipe.zadd(name, {message_id: index})
                    pipe.set(f"arq:job:{message_id}", b'{"f":"run_job","a":[1,"x",0],"k":{}}')
                await pipe.execute()
        script = redis.register_script(FIFO_TAKE_SCRIPT)
        times = []
        for _ in range(samples):
            began = time.perf_counter()
            reply = await cast(
                Awaitable[list[bytes]],
                script(keys=[name], args=["arq:in-progress:", "arq:job:", 300_000, 100]),
            )
            times.append(time.perf_counter() - began)
            message_id = reply[0].decode()
            async with redis.pipeline(transaction=True) as pipe:  # its finish, as it was
                pipe.delete(f"arq:in-progress:{message_id}", f"arq:job:{message_id}")
                pipe.zrem(name, message_id)
                await pipe.execute()
        return times
    finally:
        await redis.aclose()
        await redis.connection_pool.disconnect()


async def positions(settings: Settings, made: list[Any], samples: int) -> list[float]:
    """Seconds per `QueueView.status` of random queued jobs (snapshot cached as in the
    servers: read once a second)."""
    redis = queue.connect(settings)
    view = QueueView(redis, settings)
    past = datetime.now(UTC) - timedelta(seconds=1)
    rng = random.Random(5)  # noqa: S311 - sampling, not cryptography
    times = []
    try:
        await view.turns(MODEL)  # the first read of a second pays the snapshot
        for job_id, owner in rng.sample(made, samples):
            job = QueuedJob(cast(uuid.UUID, job_id), owner, MODEL, 0, past)
            began = time.perf_counter()
            await view.status(job)
            times.append(time.perf_counter() - began)
    finally:
        await redis.aclose()
        await redis.connection_pool.disconnect()
    return times


async def snapshot_seconds(settings: Settings, reads: int = 5) -> float:
    """How long one snapshot of the round takes (the once-a-second read), the median."""
    redis = queue.connect(settings)
    view = QueueView(redis, settings, max_age=0)
    times = []
    try:
        for _ in range(reads):
            began = time.perf_counter()
            await view.turns(MODEL)
            times.append(time.perf_counter() - began)
    finally:
        await redis.aclose()
        await redis.connection_pool.disconnect()
    return sorted(times)[len(times) // 2]
