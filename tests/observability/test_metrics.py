"""Real jobs through a stack of real processes, then every process's /metrics scraped and
parsed: the counters and histograms moved by exactly what the job table says happened."""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import pytest

from darkroom.config import DEV_TOKEN
from darkroom.v1 import events_service_pb2, job_pb2
from tests.observability.conftest import Process, World

pytestmark = pytest.mark.timeout(180)

JOBS = "darkroom.v1.JobsService"
EVENTS = "darkroom.v1.EventsService"
TERMINAL = {job_pb2.JOB_STATE_SUCCEEDED, job_pb2.JOB_STATE_FAILED, job_pb2.JOB_STATE_CANCELLED}
NOT_LOGGED = {"snapshot", "position"}


def value(process: Process, name: str, **labels: str) -> float:
    """The sum of `name`'s samples whose labels include `labels` (0 when none)."""
    return sum(
        sample.value
        for sample in process.scrape()
        if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items())
    )


def has(process: Process, name: str) -> bool:
    return any(sample.name == name for sample in process.scrape())


async def eventually(check: Callable[[], Awaitable[bool]], what: str, limit: float = 30) -> None:
    async with asyncio.timeout(limit):
        while not await check():
            await asyncio.sleep(0.1)
    assert await check(), what


def http_get(url: str) -> tuple[int, bytes]:
    """GET `url` as the development caller: its status and body."""
    request = urllib.request.Request(url, headers={"authorization": f"Bearer {DEV_TOKEN}"})  # noqa: S310 - loopback
    try:
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 - loopback
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


async def watch(stub: object, job_id: str) -> list[events_service_pb2.JobEvent]:
    """Every event of one job's stream, which ends by itself after the terminal event."""
    request = events_service_pb2.WatchJobRequest(job_id=job_id)
    metadata = (("authorization", f"Bearer {DEV_TOKEN}"),)
    call = stub.WatchJob(request, metadata=metadata, timeout=60)  # type: ignore[attr-defined]
    return [response.event async for response in call]


async def test_every_process_serves_metrics_that_add_up_to_the_job_table(world: World) -> None:
    jobs = await world.spawn("jobs", "darkroom.services.jobs")
    events = await world.spawn("events", "darkroom.services.events")
    # Its first upload fails (a transient storage error): that job runs twice.
    good = await world.spawn(
        "generator",
        "tests.fake_generator",
        "step_ms=5&upload_fail=1",
        DARKROOM_GENERATOR_MODEL="tiny-sd",
    )
    broken = await world.spawn(
        "broken", "tests.fake_generator", "step_ms=5&fail=raise", DARKROOM_GENERATOR_MODEL="broken"
    )
    reconciler = await world.spawn("reconciler", "darkroom.services.reconciler")
    gateway_port = world.port()
    gateway = await world.spawn(
        "gateway", "darkroom.services.gateway", DARKROOM_GATEWAY_ADDRESS=f"127.0.0.1:{gateway_port}"
    )
    caller, events_stub = await world.caller()

    spec: dict[str, Any] = {"width": 64, "height": 64, "steps": 4}
    done = [(await caller.submit(model="tiny-sd", **spec)).job.id for _ in range(3)]
    done.append((await caller.submit(model="broken", **spec)).job.id)
    waiting = (await caller.submit(model="idle", **spec)).job.id
    cancelled = (await caller.submit(model="idle", **spec)).job.id
    await caller.cancel(cancelled)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await caller.submit(model="tiny-sd", width=7)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    streams = await asyncio.gather(*(watch(events_stub, job_id) for job_id in done))
    final = {job_id: await caller.get(job_id) for job_id in [*done, waiting, cancelled]}
    ok = [job_id for job_id in done[:3] if final[job_id].state == job_pb2.JOB_STATE_SUCCEEDED]
    assert len(ok) == 3, {job_id: final[job_id] for job_id in done}
    failed = final[done[3]]
    assert failed.state == job_pb2.JOB_STATE_FAILED
    attempts = sum(final[job_id].attempt for job_id in ok)
    retried = attempts - len(ok)
    assert retried == 1  # the upload that failed once, retried

    # Jobs: calls by method and code, submits by model, the owner's cancel.
    assert value(jobs, "darkroom_jobs_submitted_total", model="tiny-sd") == 3
    assert value(jobs, "darkroom_jobs_submitted_total", model="broken") == 1
    assert value(jobs, "darkroom_jobs_submitted_total", model="idle") == 2
    submit = {"grpc_service": JOBS, "grpc_method": "SubmitJob", "grpc_type": "unary"}
    assert value(jobs, "grpc_server_handled_total", grpc_code="OK", **submit) == 6
    assert value(jobs, "grpc_server_handled_total", grpc_code="INVALID_ARGUMENT", **submit) == 1
    assert value(jobs, "grpc_server_started_total", **submit) == 7
    assert value(jobs, "grpc_server_handling_seconds_count", **submit) == 7
    gets = value(jobs, "grpc_server_handled_total", grpc_method="GetJob", grpc_code="OK")
    assert gets == len(final)
    assert value(jobs, "darkroom_job_cancellations_total", model="idle", state="queued") == 1
    cancelled_done = {"model": "idle", "outcome": "cancelled", "reason": ""}
    assert value(jobs, "darkroom_jobs_finished_total", **cancelled_done) == 1

    # The generators: attempts, outcomes, retries by reason, waits, runs, steps.
    assert value(good, "darkroom_job_attempts_started_total", model="tiny-sd") == attempts
    succeeded = {"model": "tiny-sd", "outcome": "succeeded", "reason": ""}
    assert value(good, "darkroom_jobs_finished_total", **succeeded) == 3
    assert value(good, "darkroom_job_retries_total", model="tiny-sd") == retried
    assert value(good, "darkroom_job_retries_total", reason="UNAVAILABLE") == retried
    assert value(good, "darkroom_job_queue_wait_seconds_count", model="tiny-sd") == attempts
    run = "darkroom_job_run_seconds_count"
    assert value(good, run, model="tiny-sd", outcome="succeeded") == 3
    assert value(good, run, model="tiny-sd", outcome="retried") == retried
    assert value(good, "darkroom_generator_steps_total", model="tiny-sd") == attempts * 4
    assert value(good, "darkroom_generator_steps_per_second", model="tiny-sd") > 0
    assert value(good, "darkroom_generator_busy", model="tiny-sd") == 0
    assert has(good, "darkroom_generator_model_load_seconds")
    assert 0 <= value(good, "darkroom_generator_heartbeat_age_seconds") < 5
    reason = grpc.StatusCode(
        next(c for c in grpc.StatusCode if c.value[0] == failed.error.code).value
    ).name
    assert value(broken, "darkroom_job_attempts_started_total", model="broken") == failed.attempt
    assert failed.attempt == 2  # a retried job, whatever the upload did
    assert value(broken, "darkroom_job_retries_total", model="broken") == 1
    failure = {"model": "broken", "outcome": "failed", "reason": reason}
    assert value(broken, "darkroom_jobs_finished_total", **failure) == 1
    assert value(broken, "darkroom_job_run_seconds_count", model="broken", outcome="failed") == 1

    # Events: the watches, and every logged event relayed with its delivery lag.
    logged = sum(
        1 for stream in streams for event in stream if event.WhichOneof("kind") not in NOT_LOGGED
    )
    watch_calls = {"grpc_service": EVENTS, "grpc_method": "WatchJob"}

    async def streams_closed() -> bool:
        return value(events, "grpc_server_handled_total", **watch_calls) == len(done)

    await eventually(streams_closed, "every watch was counted once it ended")
    assert value(events, "grpc_server_open_streams", **watch_calls) == 0
    assert value(events, "darkroom_events_watchers") == 0
    assert value(events, "grpc_server_msg_sent_total", **watch_calls) == sum(map(len, streams))
    assert value(events, "darkroom_events_relayed_total") == logged
    assert value(events, "darkroom_events_delivery_lag_seconds_count") == logged

    # The reconciler: the queue as the table has it, and every repair kind from 0.
    async def queue_read() -> bool:
        return (
            value(reconciler, "darkroom_queue_queued_jobs", model="idle") == 1
            and value(reconciler, "darkroom_queue_running_jobs") == 0
            and value(reconciler, "darkroom_queue_queued_jobs", model="tiny-sd") == 0
        )

    await eventually(queue_read, "the reconciler's queue gauges follow the job table")
    assert value(reconciler, "darkroom_queue_due_jobs", model="idle") == 1
    assert value(reconciler, "darkroom_queue_oldest_due_age_seconds", model="idle") > 0
    assert value(reconciler, "darkroom_queue_read_timestamp_seconds") > 0
    for kind in ("requeued", "failed_lost", "expired", "enqueued", "republished"):
        assert has(reconciler, "darkroom_reconciler_repairs_total")
        assert value(reconciler, "darkroom_reconciler_repairs_total", kind=kind) >= 0
    assert value(reconciler, "darkroom_reconciler_pass_seconds_count") > 0

    # The gateway: requests by route template, never by path.
    base = f"http://127.0.0.1:{gateway_port}"
    status, body = await asyncio.to_thread(http_get, f"{base}/v1/jobs/{waiting}")
    assert (status, json.loads(body)["id"]) == (200, waiting)
    status, _ = await asyncio.to_thread(http_get, f"{base}/nowhere/{waiting}")
    assert status == 404
    route = {"route": "/v1/jobs/{job_id}", "method": "GET"}
    assert value(gateway, "darkroom_gateway_http_requests_total", code="200", **route) == 1
    assert value(gateway, "darkroom_gateway_http_requests_total", route="unmatched") == 1
    for process in (jobs, events, good, reconciler, gateway):
        assert not any(waiting in sample.labels.values() for sample in process.scrape())
        assert value(process, "process_cpu_seconds_total") > 0
