"""Deliveries survive what happens to the processes around them: a delivery worker killed
mid-POST, Postgres restarted mid-run, a thousand jobs ending at once, a dead destination."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from darkroom import db
from darkroom.config import Settings
from darkroom.webhooks.endpoints import Endpoints
from darkroom.webhooks.log import DeliveryLog
from darkroom.wiring import Resources
from tests.conftest import create_database
from tests.faults.cluster import Servers, own_servers
from tests.helpers import job_request
from tests.services.webhooks.conftest import LEASE, Finish, WorkerFactory, settled
from tests.services.webhooks.receiver import Receiver


def _environment(settings: Settings, **changes: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("DARKROOM_")}
    env.update(
        {
            "DARKROOM_DATABASE_URL": settings.database_url,
            "DARKROOM_STORAGE_URL": settings.storage_url,
            "DARKROOM_WEBHOOK_ALLOW_NETWORKS": '["127.0.0.0/8"]',
            "DARKROOM_WEBHOOK_RETRY_SCHEDULE": "[0, 0.3, 0.6]",
            "DARKROOM_WEBHOOK_TIMEOUT": "10",
            "DARKROOM_WEBHOOK_LEASE": "11",
            "DARKROOM_WEBHOOK_POLL_INTERVAL": "0.02",
            "DARKROOM_LOG_JSON": "true",
            **changes,
        }
    )
    return env


async def test_a_worker_killed_mid_post_is_followed_by_another_with_the_same_id(
    receiver: Receiver,
    finish_job: Finish,
    webhook_settings: Settings,
    endpoints: Endpoints,
    delivery_log: DeliveryLog,
) -> None:
    receiver.script = ["hang"]
    row = await finish_job(receiver.url())
    command = [sys.executable, "-m", "darkroom.services.webhooks"]
    env = _environment(webhook_settings)
    first = await asyncio.create_subprocess_exec(*command, env=env, stderr=subprocess.DEVNULL)
    try:
        [held] = await receiver.wait_for(1)
    finally:
        first.send_signal(signal.SIGKILL)
        await first.wait()
    # Due again when the killed worker's lease ends (11 s, a little over its timeout).
    env["DARKROOM_WORKER_ID"] = "the-second"
    second = await asyncio.create_subprocess_exec(*command, env=env, stderr=subprocess.DEVNULL)
    try:
        calls = await receiver.wait_for(2, timeout=30)
        [logged] = await settled(delivery_log, "alice", row.id)
    finally:
        second.send_signal(signal.SIGTERM)
        await asyncio.wait_for(second.wait(), 10)
    assert calls[1].id == held.id
    secret = await endpoints.signing_secret("alice")
    assert held.verify(secret) == calls[1].verify(secret)
    assert logged.delivery.state == "DELIVERED"
    assert [(a.number, a.ended_at is None) for a in logged.attempts] == [(1, True), (2, False)]
    assert logged.attempts[1].worker == "the-second"


async def test_a_thousand_jobs_ending_at_once_are_all_delivered(
    receiver: Receiver,
    resources: Resources,
    start_worker: WorkerFactory,
    endpoints: Endpoints,
    engine: AsyncEngine,
) -> None:
    webhook = {"url": receiver.url(), "events": ["WEBHOOK_EVENT_TERMINAL"]}
    created = await resources.store.create_many(
        [("alice", job_request(webhook=webhook)) for _ in range(1_000)], 3
    )
    lifecycle = resources.lifecycle

    async def finish(job_id: uuid.UUID) -> None:
        claimed = await lifecycle.claim(job_id, 0, "worker-1", LEASE)
        assert claimed is not None
        assert await lifecycle.succeed(job_id, claimed.attempt, [], "tiny", "v1") is not None

    for start in range(0, 1_000, 100):
        await asyncio.gather(*(finish(row.id) for row, _ in created[start : start + 100]))
    await start_worker(webhook_concurrency=64)
    calls = await receiver.wait_for(1_000, timeout=90)
    assert len({call.id for call in calls}) == 1_000
    secret = await endpoints.signing_secret("alice")
    jobs = {payload["data"]["id"] for payload in (call.verify(secret) for call in calls)}  # type: ignore[index]
    assert jobs == {str(row.id) for row, _ in created}
    for _ in range(200):  # the last answers are being recorded
        async with engine.connect() as connection:
            states = await connection.execute(
                text("SELECT state, count(*) FROM webhook_deliveries GROUP BY state")
            )
            counted = {state: count for state, count in states}
        if counted == {"DELIVERED": 1_000}:
            break
        await asyncio.sleep(0.05)
    assert counted == {"DELIVERED": 1_000}


async def test_a_dead_destination_trips_its_circuit_and_others_go_on(
    finish_job: Finish, start_worker: WorkerFactory, endpoints: Endpoints
) -> None:
    dead, alive = await Receiver(default="fail").start(), await Receiver().start()
    try:
        await endpoints.create("alice", alive.url(), ["WEBHOOK_EVENT_TERMINAL"])
        for _ in range(6):
            await finish_job(dead.url())
        await start_worker(
            webhook_circuit_failures=2,
            webhook_circuit_cooldown=timedelta(minutes=5),
            webhook_concurrency=1,
        )
        await alive.wait_for(6)
        await asyncio.sleep(0.5)
        # Two failures in a row opened the dead one's circuit: nothing more is tried there.
        assert len(dead.received) == 2
    finally:
        await dead.stop()
        await alive.stop()


@pytest.fixture(scope="module")
def private_servers() -> Iterator[Servers]:
    own = own_servers()
    yield own
    own.redis.close()
    own.postgres.close()


@pytest.fixture
async def private_settings(private_servers: Servers, webhook_settings: Settings) -> Settings:
    url = create_database(private_servers.postgres.url, f"darkroom_webhooks_{uuid.uuid4().hex[:8]}")
    await asyncio.to_thread(db.migrate, url)
    return webhook_settings.model_copy(
        update={
            "database_url": url,
            "redis_url": private_servers.redis.url,
            "storage_url": tempfile.mkdtemp(prefix="darkroom-webhooks-pg-"),
        }
    )


async def test_postgres_restarted_mid_run_loses_no_delivery(
    receiver: Receiver, private_servers: Servers, private_settings: Settings
) -> None:
    from darkroom.services.webhooks.__main__ import start  # noqa: PLC0415

    receiver.default = "slow"
    resources = Resources.open(private_settings)
    worker = await start(private_settings)
    lifecycle = resources.lifecycle
    webhook = {"url": receiver.url(), "events": ["WEBHOOK_EVENT_TERMINAL"]}
    try:
        created = await resources.store.create_many(
            [("alice", job_request(webhook=webhook)) for _ in range(40)], 3
        )
        for row, _ in created[:20]:
            claimed = await lifecycle.claim(row.id, 0, "worker-1", LEASE)
            assert claimed is not None
            await lifecycle.succeed(row.id, claimed.attempt, [], "tiny", "v1")
        await receiver.wait_for(3)
        await asyncio.to_thread(private_servers.restart_postgres)  # POSTs are in flight
        for row, _ in created[20:]:
            claimed = await lifecycle.claim(row.id, 0, "worker-1", LEASE)
            assert claimed is not None
            await lifecycle.succeed(row.id, claimed.attempt, [], "tiny", "v1")
        log = DeliveryLog(resources.engine)
        for row, _ in created:
            [logged] = await settled(log, "alice", row.id, timeout=30)
            assert logged.delivery.state == "DELIVERED"
        delivered = {
            f"msg_{(await log.list('alice', job_id=r.id, limit=1))[0].delivery.id}"
            for r, _ in created
        }
        assert {call.id for call in receiver.received} == delivered
    finally:
        await worker.stop(timedelta(seconds=1))
        await resources.close()


async def test_a_slow_destination_holds_only_its_share_of_a_workers_slots(
    finish_job: Finish, start_worker: WorkerFactory
) -> None:
    slow, quick = await Receiver(default="hang").start(), await Receiver().start()
    try:
        for _ in range(4):  # due first, so a plain take would fill every slot with them
            await finish_job(slow.url())
        await finish_job(quick.url())
        started = time.monotonic()
        await start_worker(
            webhook_concurrency=4,
            webhook_destination_concurrency=2,
            webhook_timeout=timedelta(seconds=3),
            webhook_lease=timedelta(seconds=5),
            webhook_circuit_failures=100,
        )
        [call] = await quick.wait_for(1, timeout=10)
        assert call.at - started < 2.0  # not after the slow ones' 3 s timeout
        await slow.wait_for(2)
        await asyncio.sleep(0.3)
        assert len(slow.received) == 2  # two at a time, though four are due
    finally:
        await slow.stop()
        await quick.stop()
