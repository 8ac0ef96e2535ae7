"""The generator's queue consumer against a real Redis: what it takes, what it skips, and
that nothing in the queue or in Redis itself can stop it."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta

import pytest
import redis.asyncio
from arq.constants import in_progress_key_prefix, job_key_prefix

from darkroom import devservers, queue
from darkroom.config import Settings
from darkroom.consumer import Consumer
from darkroom.queue import QueueMessage

MODEL = "tiny-sd"


@pytest.fixture
async def scoped(settings: Settings) -> Settings:
    return settings.model_copy(update={"key_prefix": f"{settings.key_prefix}-consumer"})


@pytest.fixture
async def arq_redis(scoped: Settings) -> AsyncIterator[queue.QueueRedis]:
    client = queue.connect(scoped)
    yield client
    await client.aclose()
    await client.connection_pool.disconnect()


class Recorder:
    def __init__(self) -> None:
        self.handled: list[QueueMessage] = []
        self.arrived = asyncio.Event()

    async def __call__(self, message: QueueMessage) -> None:
        self.handled.append(message)
        self.arrived.set()


def _consumer(client: queue.QueueRedis, scoped: Settings, handle: Recorder) -> Consumer:
    return Consumer(
        client,
        scoped.queue_for(MODEL),
        handle,
        hold=timedelta(seconds=30),
        poll_delay=timedelta(seconds=0.2),
        keys=scoped.keys,
    )


async def _until(recorder: Recorder, count: int) -> None:
    async with asyncio.timeout(10):
        while len(recorder.handled) < count:
            recorder.arrived.clear()
            await recorder.arrived.wait()


async def test_junk_in_the_queue_is_removed_and_does_not_stall_it(
    scoped: Settings, arq_redis: queue.QueueRedis, redis_client: redis.asyncio.Redis
) -> None:
    name = scoped.queue_for(MODEL)
    # 3,000 due ids with no message behind them, all due before the real one.
    await redis_client.zadd(name, {f"junk-{index}": index for index in range(3_000)})
    job_id = uuid.uuid4()
    await queue.JobQueue(arq_redis, scoped).enqueue(job_id, 0, MODEL)
    recorder = Recorder()
    consumer = _consumer(arq_redis, scoped, recorder)
    running = asyncio.create_task(consumer.run())
    try:
        await _until(recorder, 1)  # served first: junk is no one's, so it waits for no one
        async with asyncio.timeout(10):  # and swept while the worker has nothing else to do
            while await redis_client.zcard(name):
                await asyncio.sleep(0.05)
    finally:
        consumer.stop()
        await running
    assert recorder.handled == [QueueMessage(job_id, 0)]


async def test_held_messages_are_skipped_and_malformed_ones_dropped(
    scoped: Settings, arq_redis: queue.QueueRedis, redis_client: redis.asyncio.Redis
) -> None:
    jobs = queue.JobQueue(arq_redis, scoped)
    held, good = uuid.uuid4(), uuid.uuid4()
    await jobs.enqueue(held, 0, MODEL)
    await redis_client.set(in_progress_key_prefix + jobs.arq_job_id(held, 0), b"1")
    name = scoped.queue_for(MODEL)
    await redis_client.zadd(name, {"bad-json": 1, "bad-args": 2})
    await redis_client.set(job_key_prefix + "bad-json", b"{not json")
    await redis_client.set(
        job_key_prefix + "bad-args", b'{"t":1,"f":"run_job","a":[9,"x",0],"k":{},"et":1}'
    )
    await jobs.enqueue(good, 0, MODEL)
    recorder = Recorder()
    consumer = _consumer(arq_redis, scoped, recorder)
    running = asyncio.create_task(consumer.run())
    try:
        await _until(recorder, 1)
        await asyncio.sleep(0.3)  # time enough to take the held one too, if it would
    finally:
        consumer.stop()
        await running
    assert recorder.handled == [QueueMessage(good, 0)]
    remaining = {member.decode() for member in await redis_client.zrange(name, 0, -1)}
    assert remaining == {jobs.arq_job_id(held, 0)}


async def test_an_unreachable_redis_never_ends_the_loop(scoped: Settings) -> None:
    dead = scoped.model_copy(update={"redis_url": f"redis://127.0.0.1:{devservers.free_port()}"})
    client = queue.connect(dead)
    consumer = _consumer(client, dead, Recorder())
    running = asyncio.create_task(consumer.run())
    try:
        await asyncio.sleep(1.0)
        assert not running.done()  # it logged, backed off and kept trying
        assert consumer.polls >= 2
    finally:
        consumer.stop()
        async with asyncio.timeout(10):
            await running
        await client.aclose()
        await client.connection_pool.disconnect()
