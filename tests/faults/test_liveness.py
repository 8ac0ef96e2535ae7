"""Liveness under faults: a generator never stops unless told to, junk cannot stall a queue,
a slow upload runs once, a deploy never fails a started job for its queue deadline, and
skewed clocks change nothing. Real processes; every history goes through the checker."""

from __future__ import annotations

import asyncio
import json
import signal
import uuid
from pathlib import Path
from typing import Any

import grpc
import pytest
from arq.constants import job_key_prefix

from darkroom import events
from darkroom.consumer import MOST_DELIVERIES
from darkroom.keys import Keys
from darkroom.v1 import job_pb2
from tests.faults.cluster import Cluster

MODEL = "tiny-sd"
RUNNING: set[int] = {job_pb2.JOB_STATE_RUNNING}
QUEUED: set[int] = {job_pb2.JOB_STATE_QUEUED}


async def clean(cluster: Cluster) -> None:
    (await cluster.check()).assert_clean()


def queue_name(cluster: Cluster) -> str:
    return cluster.settings.queue_for(MODEL)


async def kinds(cluster: Cluster, job_id: str) -> list[str]:
    log = events.EventLog(cluster.redis, cluster.settings.key_prefix)
    return [str(event.WhichOneof("kind")) for _, event in await log.read(job_id)]


async def test_poison_messages_are_set_aside_and_the_generator_keeps_working(
    cluster: Cluster,
) -> None:
    name = queue_name(cluster)
    # A job whose message has already been taken as often as a message may be, as if each
    # take had killed its worker.
    crashing = await cluster.submit()
    crashing_id = cluster.settings.keys.message_id(crashing, 0)
    await cluster.redis.hset(Keys.deliveries(name), crashing_id, str(MOST_DELIVERIES))  # type: ignore[misc]
    # Messages no worker can read: not JSON, and arq fields of the wrong type.
    await cluster.redis.zadd(name, {"poison-json": 0, "poison-fields": 0})
    await cluster.redis.set(job_key_prefix + "poison-json", b"{not json")
    fields = {"t": "soon", "f": "run_job", "a": [1, str(uuid.uuid4()), 0], "k": {}, "et": "x"}
    await cluster.redis.set(job_key_prefix + "poison-fields", json.dumps(fields))
    worker = await cluster.generator("step_ms=5")
    healthy = await cluster.submit()

    rejected, done = await cluster.wait_all([crashing, healthy])
    assert done.state == job_pb2.JOB_STATE_SUCCEEDED
    assert rejected.state == job_pb2.JOB_STATE_FAILED
    assert rejected.error.code == grpc.StatusCode.INTERNAL.value[0]
    assert f"taken {MOST_DELIVERIES} times without finishing" in rejected.error.message
    assert (await kinds(cluster, crashing))[-1] == "failed"
    letters = await cluster.redis.hgetall(Keys.dead_letter(name))  # type: ignore[misc]
    reasons = {key.decode(): json.loads(value)["reason"] for key, value in letters.items()}
    assert set(reasons) == {"poison-json", "poison-fields", crashing_id}
    assert reasons["poison-json"].startswith("malformed")
    assert await cluster.redis.zcard(name) == 0
    assert worker.returncode is None  # nothing it met stopped it
    await clean(cluster)


async def test_thousands_of_junk_entries_cannot_stall_the_queue(cluster: Cluster) -> None:
    # Due ids with no message behind them, all due before any real job.
    await cluster.redis.zadd(queue_name(cluster), {f"junk-{i}": i for i in range(5_000)})
    worker = await cluster.generator("step_ms=5")
    job_ids = [await cluster.submit() for _ in range(3)]
    finals = await cluster.wait_all(job_ids, timeout=60)
    assert {job.state for job in finals} == {job_pb2.JOB_STATE_SUCCEEDED}
    async with asyncio.timeout(30):  # junk is no one's: swept while the worker is idle
        while await cluster.redis.zcard(queue_name(cluster)):
            await asyncio.sleep(0.1)
    assert worker.returncode is None
    await clean(cluster)


async def test_redis_refusing_writes_pauses_the_generator_and_it_recovers(
    cluster: Cluster,
) -> None:
    await cluster.reconciler()
    worker = await cluster.generator("step_ms=5")
    await cluster.wait_all([await cluster.submit()])
    await cluster.redis.config_set("maxmemory-policy", "noeviction")
    await cluster.redis.config_set("maxmemory", "1")  # every write now answers OOM
    try:
        # Recorded in Postgres; its queue message and events cannot be written for now.
        during = await cluster.submit()
        await asyncio.sleep(3)  # the generator's takes fail all along
        assert worker.returncode is None
    finally:
        await cluster.redis.config_set("maxmemory", "0")
    after = await cluster.submit()
    finals = await cluster.wait_all([during, after], timeout=60)
    assert {job.state for job in finals} == {job_pb2.JOB_STATE_SUCCEEDED}
    assert worker.returncode is None
    await clean(cluster)


async def test_a_slow_upload_keeps_its_lease_and_runs_once(cluster: Cluster) -> None:
    # The lease is 2 s; every upload takes 5 s.
    await cluster.reconciler()
    await cluster.generator("step_ms=5&upload_ms=5000")
    job = (await cluster.wait_all([await cluster.submit(num_images=2)], timeout=60))[0]
    assert job.state == job_pb2.JOB_STATE_SUCCEEDED
    assert job.attempt == 1
    assert (await kinds(cluster, job.id)).count("started") == 1
    await clean(cluster)


async def test_a_failing_upload_retries_with_the_storage_error_as_its_cause(
    cluster: Cluster,
) -> None:
    await cluster.reconciler()
    await cluster.generator("step_ms=5&upload_ms=3000&upload_fail=1")
    job = (await cluster.wait_all([await cluster.submit()], timeout=60))[0]
    assert job.state == job_pb2.JOB_STATE_SUCCEEDED
    assert job.attempt == 2
    log = events.EventLog(cluster.redis, cluster.settings.key_prefix)
    retries = [event.retrying for _, event in await log.read(job.id) if event.HasField("retrying")]
    assert len(retries) == 1
    assert "storage service is unavailable" in retries[0].reason
    assert "lost" not in retries[0].reason
    await clean(cluster)


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL], ids=["deploy", "crash"])
async def test_a_started_job_past_its_queue_deadline_runs_again(
    cluster: Cluster, how: signal.Signals
) -> None:
    await cluster.reconciler()
    busy = await cluster.generator("step_ms=300")
    await cluster.wait_all([await cluster.submit(steps=1)])  # it serves: the next starts at once
    job_id = await cluster.submit(steps=20, queue_timeout=1)
    await cluster.wait(job_id, RUNNING)
    await asyncio.sleep(1.5)  # the queue deadline has passed while it ran
    busy.send_signal(how)
    await busy.wait()
    if how is signal.SIGTERM:
        assert busy.returncode == 0  # asked to stop: it handed the job back and exited
        handed_back = await cluster.wait(job_id, QUEUED, timeout=10)
        assert handed_back.attempt == 1
    await cluster.generator("step_ms=5")
    job = await cluster.wait(job_id, timeout=60)
    assert job.state == job_pb2.JOB_STATE_SUCCEEDED, job.error.message
    assert job.attempt == 2
    await clean(cluster)


async def test_a_job_that_never_started_still_expires(cluster: Cluster) -> None:
    await cluster.reconciler()
    job_id = await cluster.submit(queue_timeout=1)
    job = await cluster.wait(job_id, timeout=30)
    assert job.state == job_pb2.JOB_STATE_FAILED
    assert job.error.code == grpc.StatusCode.DEADLINE_EXCEEDED.value[0]
    await clean(cluster)


async def test_skewed_clocks_still_take_jobs_and_retry_on_time(
    cluster: Cluster, tmp_path: Path
) -> None:
    behind = tmp_path / "generator.log"
    await cluster.reconciler(clock="+1h")
    doomed = await cluster.generator("step_ms=100", clock="-30m", logs=behind)
    # The check runs beside the work, so wait for its verdict before the kill can cut it off.
    skewed = await _logged(behind, "clock_skewed", timeout=30)
    job_id = await cluster.submit(steps=40)
    first = await cluster.submit()
    await cluster.wait(job_id, RUNNING, timeout=30)
    doomed.kill()  # its lease expires; the reconciler, an hour ahead, schedules the retry
    await doomed.wait()
    await cluster.generator("step_ms=5", clock="-30m")
    finals = await cluster.wait_all([job_id, first], timeout=60)
    assert {job.state for job in finals} == {job_pb2.JOB_STATE_SUCCEEDED}
    assert finals[0].attempt == 2
    assert skewed, "the generator did not warn about its clock"
    assert skewed[0]["server"] in {"database", "redis"}
    assert abs(skewed[0]["offset_s"] - 1800) < 60
    await clean(cluster)


async def _logged(path: Path, event: str, timeout: float) -> list[dict[str, Any]]:
    """The JSON log lines of `event` in `path`, once there is one (empty after `timeout`)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        lines = path.read_text().splitlines() if path.exists() else []
        found = [json.loads(line) for line in lines if f'"{event}"' in line]
        if found or loop.time() > deadline:
            return found
        await asyncio.sleep(0.1)
