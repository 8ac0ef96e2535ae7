"""Delivery end to end against real Postgres and a real receiver on loopback: one signed
call per terminal move, retries on schedule, redirects and silence as failures."""

from __future__ import annotations

import asyncio

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from darkroom import metrics
from darkroom.webhooks.endpoints import Endpoints
from darkroom.webhooks.log import DeliveryLog
from darkroom.wiring import Resources
from tests.services.webhooks.conftest import LEASE, Finish, WorkerFactory, settled
from tests.services.webhooks.receiver import Receiver


async def _deliveries(engine: AsyncEngine) -> list[tuple[str, str]]:
    async with engine.connect() as connection:
        rows = await connection.execute(
            text("SELECT type, state FROM webhook_deliveries ORDER BY created_at, type")
        )
        return [(row.type, row.state) for row in rows]


async def test_a_terminal_move_is_delivered_once_signed_with_a_stable_id(
    receiver: Receiver,
    finish_job: Finish,
    start_worker: WorkerFactory,
    endpoints: Endpoints,
    delivery_log: DeliveryLog,
) -> None:
    row = await finish_job(receiver.url())
    await start_worker()
    [call] = await receiver.wait_for(1)
    payload = call.verify(await endpoints.signing_secret("alice"))
    assert payload["type"] == "job.succeeded"
    data = payload["data"]
    assert isinstance(data, dict)
    assert data["id"] == str(row.id)
    assert data["state"] == "JOB_STATE_SUCCEEDED"
    assert len(call.body) < 4_096
    [logged] = await settled(delivery_log, "alice", row.id)
    assert call.id == f"msg_{logged.delivery.id}"
    assert logged.delivery.state == "DELIVERED"
    assert [(a.number, a.status_code, a.response_body) for a in logged.attempts] == [
        (1, 200, "thanks")
    ]
    await asyncio.sleep(0.5)  # nothing more comes: the claim (started) was not asked for
    assert len(receiver.received) == 1


async def test_a_move_that_did_not_happen_writes_no_delivery(
    receiver: Receiver, finish_job: Finish, resources: Resources, engine: AsyncEngine
) -> None:
    row = await finish_job(receiver.url())
    lifecycle = resources.lifecycle
    assert await lifecycle.succeed(row.id, row.attempt, [], "tiny", "v1") is None
    assert await lifecycle.fail(row.id, row.attempt, 13, "late") is None
    assert await _deliveries(engine) == [("job.succeeded", "PENDING")]


async def test_started_and_progress_when_asked_progress_at_a_bounded_rate(
    receiver: Receiver, resources: Resources, engine: AsyncEngine
) -> None:
    from tests.helpers import job_request  # noqa: PLC0415

    events = ["WEBHOOK_EVENT_STARTED", "WEBHOOK_EVENT_PROGRESS", "WEBHOOK_EVENT_TERMINAL"]
    webhook = {"url": receiver.url(), "events": events}
    row, _ = await resources.store.create("alice", job_request(webhook=webhook), 3)
    lifecycle = resources.lifecycle
    claimed = await lifecycle.claim(row.id, 0, "worker-1", LEASE)
    assert claimed is not None
    for step in (1, 2, 3):
        assert await lifecycle.heartbeat(row.id, claimed.attempt, LEASE, step) is not None
    assert await lifecycle.heartbeat(row.id, claimed.attempt, LEASE) is not None
    assert await lifecycle.fail(row.id, claimed.attempt, 13, "broken") is not None
    assert await _deliveries(engine) == [
        ("job.started", "PENDING"),
        ("job.progress", "PENDING"),
        ("job.failed", "PENDING"),
    ]


async def test_a_receiver_that_fails_twice_is_retried_on_schedule(
    receiver: Receiver, finish_job: Finish, start_worker: WorkerFactory, delivery_log: DeliveryLog
) -> None:
    receiver.script = ["fail", "fail"]
    row = await finish_job(receiver.url())
    await start_worker()
    calls = await receiver.wait_for(3)
    assert len({call.id for call in calls}) == 1
    # The schedule is 0, 0.3 s, 0.6 s with ±10 % jitter.
    assert calls[1].at - calls[0].at >= 0.27
    assert calls[2].at - calls[1].at >= 0.54
    [logged] = await settled(delivery_log, "alice", row.id)
    assert logged.delivery.state == "DELIVERED"
    assert [(a.number, a.status_code) for a in logged.attempts] == [(1, 500), (2, 500), (3, 200)]
    assert logged.attempts[0].error == "HTTP 500"
    assert logged.attempts[0].response_body == "broken"


async def test_after_the_last_try_the_delivery_is_dead(
    receiver: Receiver, finish_job: Finish, start_worker: WorkerFactory, delivery_log: DeliveryLog
) -> None:
    receiver.default = "fail"
    row = await finish_job(receiver.url())
    await start_worker()
    [logged] = await settled(delivery_log, "alice", row.id)
    assert logged.delivery.state == "DEAD"
    assert len(logged.attempts) == 3
    assert len(receiver.received) == 3


async def test_a_redirect_is_a_recorded_failure_and_is_not_followed(
    receiver: Receiver, finish_job: Finish, start_worker: WorkerFactory, delivery_log: DeliveryLog
) -> None:
    receiver.default = "redirect"
    row = await finish_job(receiver.url())
    await start_worker(webhook_retry_schedule=[LEASE * 0])
    [logged] = await settled(delivery_log, "alice", row.id)
    assert logged.delivery.state == "DEAD"
    [attempt] = logged.attempts
    assert attempt.status_code == 302
    assert "redirect to 'https://elsewhere.example/hook' not followed" in attempt.error
    assert len(receiver.received) == 1


async def test_a_receiver_that_never_answers_times_out(
    receiver: Receiver, finish_job: Finish, start_worker: WorkerFactory, delivery_log: DeliveryLog
) -> None:
    receiver.default = "hang"
    row = await finish_job(receiver.url())
    await start_worker(webhook_retry_schedule=[LEASE * 0], webhook_timeout=LEASE / 60)
    [logged] = await settled(delivery_log, "alice", row.id)
    [attempt] = logged.attempts
    assert attempt.status_code is None
    assert attempt.error == "no answer within 0.5 s"
    assert (attempt.ended_at - attempt.started_at).total_seconds() < 1.5


async def test_only_the_start_of_a_large_answer_is_read(
    receiver: Receiver, finish_job: Finish, start_worker: WorkerFactory, delivery_log: DeliveryLog
) -> None:
    receiver.default = "big"
    row = await finish_job(receiver.url())
    await start_worker()
    [logged] = await settled(delivery_log, "alice", row.id)
    assert logged.attempts[0].response_body == "x" * 1_024


async def test_a_private_address_is_refused_without_the_allow_list(
    receiver: Receiver, finish_job: Finish, start_worker: WorkerFactory, delivery_log: DeliveryLog
) -> None:
    row = await finish_job(receiver.url().replace("127.0.0.1", "localhost"))
    await start_worker(webhook_allow_networks=[], webhook_retry_schedule=[LEASE * 0])
    [logged] = await settled(delivery_log, "alice", row.id)
    [attempt] = logged.attempts
    assert attempt.error.startswith("refused: localhost resolves to 127.0.0.1")
    assert receiver.received == []


async def test_a_host_name_is_pinned_to_its_checked_address(
    receiver: Receiver, finish_job: Finish, start_worker: WorkerFactory, endpoints: Endpoints
) -> None:
    url = receiver.url().replace("127.0.0.1", "localhost")
    await finish_job(url)
    await start_worker()
    [call] = await receiver.wait_for(1)
    assert call.headers["host"] == f"localhost:{receiver.port}"
    call.verify(await endpoints.signing_secret("alice"))


async def test_an_idle_worker_wakes_at_the_commit_not_at_its_next_poll(
    receiver: Receiver, finish_job: Finish, start_worker: WorkerFactory
) -> None:
    import time  # noqa: PLC0415
    from datetime import timedelta  # noqa: PLC0415

    await start_worker(webhook_poll_interval=timedelta(seconds=60))
    await asyncio.sleep(0.5)  # its first look found nothing: it now waits
    committed = time.monotonic()
    await finish_job(receiver.url())
    [call] = await receiver.wait_for(1, timeout=5)
    assert call.at - committed < 1.0


async def test_a_redelivered_dead_delivery_has_the_whole_schedule_again(
    receiver: Receiver, finish_job: Finish, start_worker: WorkerFactory, delivery_log: DeliveryLog
) -> None:
    receiver.default = "fail"
    row = await finish_job(receiver.url())
    await start_worker(webhook_circuit_failures=100)  # six failures in a row are fine here
    [logged] = await settled(delivery_log, "alice", row.id)
    assert (logged.delivery.state, len(logged.attempts)) == ("DEAD", 3)
    assert await delivery_log.redeliver("bob", logged.delivery.id) is None  # not bob's
    again = await delivery_log.redeliver("alice", logged.delivery.id)
    assert again is not None
    assert again.delivery.state == "PENDING"
    await asyncio.sleep(0.1)
    [logged] = await settled(delivery_log, "alice", row.id)
    assert logged.delivery.state == "DEAD"
    assert [attempt.number for attempt in logged.attempts] == [1, 2, 3, 4, 5, 6]
    assert len({call.id for call in receiver.received}) == 1


async def test_tries_are_counted_by_how_the_delivery_stood_after_them(
    receiver: Receiver, finish_job: Finish, start_worker: WorkerFactory, delivery_log: DeliveryLog
) -> None:
    def tries(result: str) -> float:
        value = metrics.REGISTRY.get_sample_value(
            "darkroom_webhook_tries_total", {"result": result}
        )
        return value or 0.0

    def timed() -> float:
        return metrics.REGISTRY.get_sample_value("darkroom_webhook_try_seconds_count") or 0.0

    receiver.script = ["fail", "fail"]
    before = {result: tries(result) for result in ("pending", "delivered")}
    timed_before = timed()
    metrics.enable()
    try:
        row = await finish_job(receiver.url())
        await start_worker()
        await receiver.wait_for(3)
        [logged] = await settled(delivery_log, "alice", row.id)
    finally:
        metrics.enable(False)
    assert logged.delivery.state == "DELIVERED"
    assert tries("pending") - before["pending"] == 2
    assert tries("delivered") - before["delivered"] == 1
    assert timed() - timed_before == 3
