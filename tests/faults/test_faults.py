"""Faults that must lose no accepted job: real processes killed by PID, Redis flushed and
stopped, Postgres restarted, zombies, poison jobs. Every history goes through the checker."""

from __future__ import annotations

import asyncio
import signal

import grpc
import pytest

from darkroom.v1 import job_pb2
from tests.faults.checker import WatchRecord, check
from tests.faults.cluster import Cluster

RUNNING: set[int] = {job_pb2.JOB_STATE_RUNNING}


async def verdict(cluster: Cluster, watchers: list[WatchRecord] | None = None) -> None:
    (await cluster.check(watchers)).assert_clean()


async def test_worker_sigkill_mid_job_runs_again_and_completes(cluster: Cluster) -> None:
    await cluster.reconciler()
    doomed = await cluster.generator("step_ms=100")
    job_id = await cluster.submit(steps=40)
    watching = asyncio.create_task(cluster.watch(job_id, drop_every=3))
    await cluster.wait(job_id, RUNNING)
    doomed.kill()
    await doomed.wait()
    killed_at = asyncio.get_running_loop().time()
    await cluster.generator("step_ms=5")
    job = await cluster.wait(job_id)
    back_after = asyncio.get_running_loop().time() - killed_at
    assert job.state == job_pb2.JOB_STATE_SUCCEEDED
    assert job.attempt == 2
    assert back_after < 30
    await verdict(cluster, [await watching])


@pytest.mark.parametrize("point", ["after_upload", "after_commit"])
async def test_kill_at_the_edges_of_the_commit(cluster: Cluster, point: str) -> None:
    await cluster.reconciler()
    doomed = await cluster.generator(fault=point)
    job_id = await cluster.submit(steps=3, num_images=2, seed=7)
    watching = asyncio.create_task(cluster.watch(job_id))
    assert await asyncio.wait_for(doomed.wait(), 60) == 137
    await cluster.generator()
    job = await cluster.wait(job_id)
    assert job.state == job_pb2.JOB_STATE_SUCCEEDED
    # Killed before the commit: a second attempt finishes. After it: the first one stands
    # and the reconciler publishes the terminal event the dead worker never sent.
    assert job.attempt == (2 if point == "after_upload" else 1)
    await verdict(cluster, [await watching])


async def test_a_zombie_worker_cannot_finish_or_publish(cluster: Cluster) -> None:
    await cluster.reconciler()
    zombie = await cluster.generator("step_ms=100")
    job_id = await cluster.submit(steps=20)
    await cluster.wait(job_id, RUNNING)
    zombie.send_signal(signal.SIGSTOP)
    await cluster.generator("step_ms=5")
    job = await cluster.wait(job_id)
    assert (job.state, job.attempt) == (job_pb2.JOB_STATE_SUCCEEDED, 2)
    outputs = list(job.outputs)
    zombie.send_signal(signal.SIGCONT)
    await asyncio.sleep(3)  # its steps resume, its heartbeat finds the job gone
    after = await cluster.caller.get(job_id)
    assert (after.state, after.attempt, list(after.outputs)) == (job.state, 2, outputs)
    await verdict(cluster)


async def test_redis_flushall_under_load_loses_nothing(cluster: Cluster) -> None:
    await cluster.reconciler()
    await cluster.generator("step_ms=5")
    jobs = [await cluster.submit(steps=5) for _ in range(30)]
    watchers = [asyncio.create_task(cluster.watch(job_id)) for job_id in jobs[:10]]
    await asyncio.sleep(0.3)
    await cluster.redis.flushall()
    jobs += [await cluster.submit(steps=5) for _ in range(10)]
    await asyncio.sleep(0.2)
    await cluster.redis.flushall()
    finals = await cluster.wait_all(jobs)
    assert all(job.state == job_pb2.JOB_STATE_SUCCEEDED for job in finals)
    # Events written before a flush are gone; the terminal state still reached everyone.
    records = [await watcher for watcher in watchers]
    result = await check(
        accepted=cluster.accepted,
        owner="alice",
        store=cluster.store,
        redis_client=cluster.redis,
        key_prefix=cluster.settings.key_prefix,
        watchers=records,
    )
    assert (result.lost, result.phantom, result.duplicate_effect) == (0, 0, 0), result
    assert (result.watcher_missed_terminal, result.watcher_gap) == (0, 0), result


async def test_redis_down_during_submit_is_never_ok_and_lost(cluster: Cluster) -> None:
    await cluster.reconciler()
    await cluster.generator("step_ms=5")
    cluster.servers.redis.close()
    accepted_while_down, refused = [], []
    for _ in range(5):
        try:
            accepted_while_down.append(await cluster.submit(steps=3))
        except grpc.aio.AioRpcError as error:
            refused.append(error.code())
    # Either OK and the job completes later, or UNAVAILABLE and no row: never OK and lost.
    assert all(code == grpc.StatusCode.UNAVAILABLE for code in refused)
    await asyncio.sleep(0.5)
    cluster.servers.restart_redis()
    finals = await cluster.wait_all(accepted_while_down)
    assert all(job.state == job_pb2.JOB_STATE_SUCCEEDED for job in finals)
    await verdict(cluster)


async def test_postgres_restart_under_load_loses_nothing(cluster: Cluster) -> None:
    await cluster.reconciler()
    await cluster.generator("step_ms=10")
    jobs = [await cluster.submit(steps=5) for _ in range(15)]
    await asyncio.to_thread(cluster.servers.restart_postgres)
    refused = []
    for _ in range(5):
        try:
            jobs.append(await cluster.submit(steps=5))
        except grpc.aio.AioRpcError as error:
            refused.append(error.code())
    # A submit that met the restart is UNAVAILABLE, and the checker finds no row for it.
    assert all(code == grpc.StatusCode.UNAVAILABLE for code in refused)
    finals = await cluster.wait_all(jobs)
    assert all(job.state == job_pb2.JOB_STATE_SUCCEEDED for job in finals)
    await verdict(cluster)


@pytest.mark.parametrize("poison", ["raise", "exit"])
async def test_poison_jobs_fail_after_max_attempts(cluster: Cluster, poison: str) -> None:
    await cluster.reconciler()
    for _ in range(3):
        await cluster.generator(f"step_ms=5&fail={poison}")
    job_id = await cluster.submit(steps=3)
    job = await cluster.wait(job_id)
    assert job.state == job_pb2.JOB_STATE_FAILED
    assert job.attempt == job.max_attempts == 3
    await verdict(cluster)


async def test_a_wedged_pipeline_is_failed_and_its_worker_exits(cluster: Cluster) -> None:
    await cluster.reconciler()
    wedged = await cluster.generator("step_ms=5&fail=hang", DARKROOM_JOB_TIMEOUT="1")
    job_id = await cluster.submit(steps=3)
    job = await cluster.wait(job_id)
    assert job.state == job_pb2.JOB_STATE_FAILED
    assert job.error.code == grpc.StatusCode.DEADLINE_EXCEEDED.value[0]
    assert await asyncio.wait_for(wedged.wait(), 30) != 0
    await verdict(cluster)


async def test_deadline_while_queued_fails_the_job(cluster: Cluster) -> None:
    await cluster.reconciler()
    job_id = await cluster.submit(queue_timeout=1)
    job = await cluster.wait(job_id)
    assert job.state == job_pb2.JOB_STATE_FAILED
    assert job.error.code == grpc.StatusCode.DEADLINE_EXCEEDED.value[0]
    await verdict(cluster)


async def test_cancel_while_queued_and_while_running(cluster: Cluster) -> None:
    queued = await cluster.submit(steps=3)
    await cluster.caller.cancel(queued)
    await cluster.generator("step_ms=50")
    running = await cluster.submit(steps=100)
    await cluster.wait(running, RUNNING)
    await cluster.caller.cancel(running)
    for job_id in (queued, running):
        assert (await cluster.wait(job_id)).state == job_pb2.JOB_STATE_CANCELLED
    await verdict(cluster)


async def test_two_reconcilers_and_kills_at_once(cluster: Cluster) -> None:
    await cluster.reconciler()
    await cluster.reconciler()
    doomed = [await cluster.generator("step_ms=50") for _ in range(2)]
    jobs = [await cluster.submit(steps=20) for _ in range(6)]
    watchers = [asyncio.create_task(cluster.watch(job_id, drop_every=2)) for job_id in jobs]
    await asyncio.sleep(1.0)
    for process in doomed:
        process.kill()
    await cluster.generator("step_ms=5")
    finals = await cluster.wait_all(jobs)
    assert all(job.state == job_pb2.JOB_STATE_SUCCEEDED for job in finals)
    await verdict(cluster, [await watcher for watcher in watchers])
