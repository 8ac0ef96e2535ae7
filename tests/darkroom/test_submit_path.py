"""The submit hot path's own pieces on real Postgres and Redis: the one-statement batch
insert, and the enqueue script that stands in for arq's `enqueue_job`."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable
from datetime import UTC, datetime, timedelta
from typing import cast

import redis.asyncio
from arq.constants import job_key_prefix
from arq.jobs import deserialize_job
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from darkroom import queue
from darkroom.config import Settings
from darkroom.inserts import JobInserter
from darkroom.keys import Keys
from darkroom.models import State
from darkroom.spec import Spec
from darkroom.store import JobStore
from tests.helpers import job_request


async def test_a_batch_keeps_every_value_exactly(store: JobStore) -> None:
    # Values that a JSON round trip could bend: quotes, backslashes, non-ASCII, the
    # largest seed, a float with no short decimal form, a fractional queue timeout.
    prompt = 'a "quoted" \\ backslash, ünïcødé 東京 and an emoji 🦉'
    request = job_request(
        prompt,
        negative_prompt="tab\tand newline\n",
        seed=2**32 - 1,
        guidance_scale=0.1 + 0.2,
        width=1_024,
        height=64,
        num_images=4,
        queue_timeout=timedelta(seconds=90.25),
    )
    before = datetime.now(UTC)
    [(row, created)] = await store.create_many([("exact", request)], max_attempts=7)
    assert created
    assert (row.prompt, row.negative_prompt) == (prompt, "tab\tand newline\n")
    assert (row.seed, row.guidance_scale) == (2**32 - 1, 0.1 + 0.2)
    assert (row.width, row.height, row.num_images, row.max_attempts) == (1_024, 64, 4, 7)
    assert (row.request_id, row.request_hash, row.model) == (
        request.request_id,
        request.request_hash,
        request.spec.model,
    )
    assert Spec.of(row) == request.spec
    assert row.prompt_sha256 == request.spec.prompt_sha256
    assert row.state is State.QUEUED  # an enum, not a bare str
    assert (row.attempt, row.cancel_requested, row.outputs) == (0, False, [])
    # The deadline comes from the database clock: created_at + the queue timeout.
    assert row.deadline - row.created_at == timedelta(seconds=90.25)
    assert abs(row.created_at - before) < timedelta(seconds=30)
    # What came back is what a later read sees.
    stored = await store.get("exact", row.id)
    assert stored is not None
    assert (stored.prompt, stored.seed, stored.guidance_scale, stored.deadline) == (
        prompt,
        row.seed,
        row.guidance_scale,
        row.deadline,
    )


async def test_a_batch_answers_each_request_in_order(store: JobStore) -> None:
    first, second = job_request("first"), job_request("second")
    [(kept, _)] = await store.create_many([("order", first)], max_attempts=3)
    results = await store.create_many(
        [
            ("order", second),
            ("order", first),  # already recorded: its row comes back, not created
            ("order", second),  # the same request twice in one batch: one row
            ("other-owner", first),  # request ids are per owner
        ],
        max_attempts=3,
    )
    [(a, a_new), (b, b_new), (c, c_new), (d, d_new)] = results
    assert (a_new, b_new, c_new, d_new) == (True, False, False, True)
    assert b.id == kept.id
    assert c.id == a.id
    assert c.prompt == "second"
    assert d.owner == "other-owner"
    assert d.id not in {a.id, kept.id}


async def test_concurrent_batches_with_the_same_requests_make_one_row_each(
    store: JobStore,
) -> None:
    requests = [job_request(f"race {index}") for index in range(20)]
    # Opposite orders: the transactions meet on the unique index in both directions.
    forward = [("race", request) for request in requests]
    results = await asyncio.gather(
        store.create_many(forward, max_attempts=3),
        store.create_many(list(reversed(forward)), max_attempts=3),
        return_exceptions=True,
    )
    rows = [result for result in results if isinstance(result, list)]
    ids: dict[uuid.UUID, set[uuid.UUID]] = {}
    for batch in rows:
        for row, _ in batch:
            ids.setdefault(row.request_id, set()).add(row.id)
    # Whatever the interleaving, no request ever has two rows.
    assert all(len(job_ids) == 1 for job_ids in ids.values())
    if len(rows) == 2:
        created = sum(made for batch in rows for _, made in batch)
        assert created == len(requests)


async def test_the_inserter_recovers_after_its_connection_dies(engine: AsyncEngine) -> None:
    inserter = JobInserter(engine)
    try:
        [(row, created)] = await inserter.insert([("inserter", job_request())], 3)
        assert created
        # Kill the inserter's own backend, as a database restart would.
        held = inserter._held._connection
        assert held is not None
        driver = (await held.get_raw_connection()).driver_connection
        assert driver is not None
        pid = driver.info.backend_pid
        async with engine.connect() as connection:
            await connection.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
        failures = 0
        for _ in range(3):
            try:
                [(again, created)] = await inserter.insert([("inserter", job_request())], 3)
            except Exception:  # noqa: BLE001 - the first use of the dead connection fails
                failures += 1
                continue
            assert created
            assert again.id != row.id
            break
        assert failures == 1
    finally:
        await inserter.close()


async def _tokens(client: redis.asyncio.Redis, key: str) -> int:
    return await cast(Awaitable[int], client.llen(key))


async def test_enqueue_writes_what_arq_would(
    settings: Settings, redis_client: redis.asyncio.Redis
) -> None:
    scoped = settings.model_copy(update={"key_prefix": f"{settings.key_prefix}-enqueue"})
    arq_redis = queue.connect(scoped)
    jobs = queue.JobQueue(arq_redis, scoped)
    job_id = uuid.uuid4()
    try:
        await jobs.enqueue(job_id, 2, "tiny-sd")
        arq_id = jobs.arq_job_id(job_id, 2)
        payload = await redis_client.get(job_key_prefix + arq_id)
        assert payload is not None
        message = deserialize_job(payload, deserializer=queue.deserialize)
        assert (message.function, list(message.args), message.kwargs) == (
            queue.RUN_JOB,
            [1, str(job_id), 2],
            {},
        )
        # The same message as arq's own enqueue_job writes, but for its enqueue time.
        await arq_redis.enqueue_job(queue.RUN_JOB, 1, str(job_id), 2, _job_id="by-arq")
        by_arq = await redis_client.get(job_key_prefix + "by-arq")
        assert by_arq is not None
        ours, theirs = queue.deserialize(payload), queue.deserialize(by_arq)
        assert ours.keys() == theirs.keys()
        assert {**ours, "et": 0} == {**theirs, "et": 0}
        await redis_client.delete(job_key_prefix + "by-arq")
        ttl_ms = await redis_client.pttl(job_key_prefix + arq_id)
        assert 0 < ttl_ms <= arq_redis.expires_extra_ms
        assert await jobs.message_state(job_id, 2, "tiny-sd") == "waiting"
        score = await redis_client.zscore(scoped.queue_for("tiny-sd"), arq_id)
        assert score is not None
        # One wake-up token for idle workers, on a list that cannot outlive its use.
        wake = Keys.wake(scoped.queue_for("tiny-sd"))
        assert await _tokens(redis_client, wake) == 1
        assert 0 < await redis_client.pttl(wake) <= 60_000
        # Queued already: a second enqueue changes nothing (arq answers None for it).
        await jobs.enqueue(job_id, 2, "tiny-sd", delay=timedelta(hours=1))
        assert await redis_client.zscore(scoped.queue_for("tiny-sd"), arq_id) == score
        assert await _tokens(redis_client, wake) == 1
        # A deferred attempt is scored at its time, and kept at least until then.
        await jobs.enqueue(job_id, 3, "tiny-sd", delay=timedelta(hours=1))
        seconds, micros = await redis_client.time()
        redis_now_ms = seconds * 1000 + micros // 1000
        deferred = jobs.arq_job_id(job_id, 3)
        deferred_score = await redis_client.zscore(scoped.queue_for("tiny-sd"), deferred)
        assert deferred_score is not None
        # Due an hour after the Redis clock's now, whatever this process's clock says.
        assert 0 <= redis_now_ms + 3_600_000 - deferred_score < 1_000
        assert await redis_client.pttl(job_key_prefix + deferred) > 3_600_000
        # Tokens nobody takes are capped.
        for attempt in range(4, 100):
            await jobs.enqueue(job_id, attempt, "tiny-sd")
        assert await _tokens(redis_client, wake) == 64
    finally:
        await arq_redis.aclose()
        await arq_redis.connection_pool.disconnect()
