"""The event log's one-command append, against the real Redis."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
import redis.asyncio

from darkroom import events
from darkroom.config import Settings
from darkroom.events import EVENT_FIELD, START, Continuity, EventLog, JobEvent
from darkroom.keys import Keys
from darkroom.v1 import job_pb2


def _log(redis_client: redis.asyncio.Redis, settings: Settings) -> EventLog:
    return EventLog(
        redis_client,
        f"{settings.key_prefix}-log",
        active_ttl=timedelta(hours=2),
        terminal_ttl=timedelta(minutes=30),
    )


async def _stream(client: redis.asyncio.Redis, key: str) -> list[tuple[str, JobEvent]]:
    entries = await client.xrange(key)
    return [
        (entry_id.decode(), JobEvent.FromString(fields[EVENT_FIELD]))
        for entry_id, fields in entries
    ]


async def test_a_batch_lands_in_order_with_one_notification(
    redis_client: redis.asyncio.Redis, settings: Settings
) -> None:
    log = _log(redis_client, settings)
    job_id = str(uuid.uuid4())
    key = Keys(f"{settings.key_prefix}-log").events(job_id)
    pubsub = redis_client.pubsub()
    await pubsub.subscribe(Keys(f"{settings.key_prefix}-log").notify_channel)
    await pubsub.get_message(timeout=1)  # the subscribe confirmation
    try:
        ids = await log.append_many([events.progress(job_id, 1, step, 5) for step in (1, 2, 3)])
        stored = await _stream(redis_client, key)
        assert [entry_id for entry_id, _ in stored] == ids
        assert [event.progress.progress.step for _, event in stored] == [1, 2, 3]
        assert 0 < await redis_client.ttl(key) <= 2 * 3600
        message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1)
        assert message is not None
        assert message["data"].decode() == job_id
        # One notification for the whole batch: watchers read the stream from their cursor.
        assert await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.2) is None

        job = job_pb2.Job(id=job_id, state=job_pb2.JOB_STATE_SUCCEEDED)
        last = await log.append(events.terminal(job))
        assert last == (await _stream(redis_client, key))[-1][0]
        assert 0 < await redis_client.ttl(key) <= 30 * 60
    finally:
        await pubsub.aclose()
        await redis_client.delete(key)


async def test_append_survives_a_flushed_script_cache(
    redis_client: redis.asyncio.Redis, settings: Settings
) -> None:
    log = _log(redis_client, settings)
    job_id = str(uuid.uuid4())
    key = Keys(f"{settings.key_prefix}-log").events(job_id)
    try:
        await log.append(events.queued(job_id, 0))
        await redis_client.script_flush()
        await log.append(events.started(job_id, 1, "w"))
        kinds = [event.WhichOneof("kind") for _, event in await _stream(redis_client, key)]
        assert kinds == ["queued", "started"]
    finally:
        await redis_client.delete(key)


async def test_a_batch_of_two_jobs_is_refused_and_writes_nothing(
    redis_client: redis.asyncio.Redis, settings: Settings
) -> None:
    log = _log(redis_client, settings)
    first, second = str(uuid.uuid4()), str(uuid.uuid4())
    with pytest.raises(ValueError, match="one job"):
        await log.append_many([events.queued(first, 0), events.queued(second, 0)])
    prefix = f"{settings.key_prefix}-log"
    assert not await redis_client.exists(Keys(prefix).events(first), Keys(prefix).events(second))
    assert await log.append_many([]) == []


async def test_appends_share_a_pipeline(
    redis_client: redis.asyncio.Redis, settings: Settings
) -> None:
    log = _log(redis_client, settings)
    jobs = [str(uuid.uuid4()) for _ in range(3)]
    prefix = f"{settings.key_prefix}-log"
    try:
        async with redis_client.pipeline(transaction=False) as pipe:
            for job_id in jobs:
                log.append_in(pipe, events.queued(job_id, 0))
            replies = await pipe.execute()
        for job_id, reply in zip(jobs, replies, strict=True):
            [(entry_id, event)] = await _stream(redis_client, Keys(prefix).events(job_id))
            assert [entry.decode() for entry in reply] == [entry_id]
            assert event.job_id == job_id
            assert event.time.ToDatetime(UTC) <= datetime.now(UTC)
    finally:
        await redis_client.delete(*(Keys(prefix).events(job_id) for job_id in jobs))


async def test_reads_follow_the_log_and_see_its_gaps(
    redis_client: redis.asyncio.Redis, settings: Settings
) -> None:
    log = _log(redis_client, settings)
    job_id = str(uuid.uuid4())
    try:
        assert await log.read_from(job_id, START, 10) == (Continuity.GONE, [])
        assert await log.last(job_id) is None
        ids = await log.append_many([events.progress(job_id, 1, step, 9) for step in range(1, 10)])
        everything = await log.read(job_id)
        assert [entry_id for entry_id, _ in everything] == ids
        assert [event.progress.progress.step for _, event in everything] == list(range(1, 10))
        assert [entry_id for entry_id, _ in await log.read(job_id, ids[5])] == ids[6:]
        status, page = await log.read_from(job_id, ids[2], 3)
        assert (status, [entry_id for entry_id, _ in page]) == (Continuity.OK, ids[3:6])
        last = await log.last(job_id)
        assert last is not None
        assert last[0] == ids[-1]
        assert last[1].progress.progress.step == 9
        await redis_client.xtrim(log.key(job_id), maxlen=2, approximate=False)
        assert await log.read_from(job_id, ids[2], 3) == (Continuity.GAP, [])
        assert [
            None if entry is None else entry[0]
            for entry in await log.last_many([job_id, str(uuid.uuid4())])
        ] == [ids[-1], None]
    finally:
        await redis_client.delete(log.key(job_id))


async def test_a_stream_takes_one_terminal_event_and_nothing_after_it(
    redis_client: redis.asyncio.Redis, settings: Settings
) -> None:
    log = _log(redis_client, settings)
    job_id = str(uuid.uuid4())
    done = job_pb2.Job(id=job_id, state=job_pb2.JOB_STATE_SUCCEEDED)
    try:
        await log.append(events.started(job_id, 1, "w"))
        first = await log.append_many([events.progress(job_id, 1, 5, 5), events.terminal(done)])
        assert len(first) == 2
        # The reconciler's republish racing the worker's own, and a zombie's late progress.
        assert await log.append(events.terminal(done)) == ""
        assert await log.append_many([events.progress(job_id, 1, 5, 5)]) == []
        kinds = [event.WhichOneof("kind") for _, event in await log.read(job_id)]
        assert kinds == ["started", "progress", "succeeded"]
    finally:
        keys = Keys(f"{settings.key_prefix}-log")
        await redis_client.delete(keys.events(job_id), keys.ended(job_id))
