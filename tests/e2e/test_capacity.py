"""Capacity and queue position through the real servers: ListModels, "waiting for a
worker" apart from "queued behind N", a watcher's position counting down with an ETA, and
priority in the API."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import pytest

from darkroom.services.generator import pipeline as pipelines
from darkroom.v1 import events_service_pb2, job_pb2, jobs_service_pb2
from tests.clients.conftest import GatedPipeline
from tests.e2e.conftest import Callers, StackFactory
from tests.helpers import Caller, rich_error

SMALL: dict[str, Any] = {"width": 64, "height": 64, "steps": 2}


def _own_model() -> dict[str, object]:
    """Settings for a model of this test's own: the job table is shared by every test."""
    model = f"m-{uuid.uuid4().hex[:8]}"
    return {"models": [model, "other-model"], "default_model": model}


async def _models(caller: Caller) -> dict[str, jobs_service_pb2.ModelStatus]:
    response = await caller.stub.ListModels(
        jobs_service_pb2.ListModelsRequest(), metadata=caller.metadata, timeout=10
    )
    return {status.model: status for status in response.models}


async def _until(check: object, timeout: float = 15) -> None:
    async with asyncio.timeout(timeout):
        while not await check():  # type: ignore[operator]
            await asyncio.sleep(0.05)


async def test_list_models_reports_workers_and_load(
    make_stack: StackFactory, callers: Callers
) -> None:
    gate = GatedPipeline(1)
    stack = await make_stack(gate, **_own_model())
    model = stack.settings.model_default
    alice, _ = await callers(stack, "alice-token")
    idle = (await _models(alice))[model]
    assert [worker.worker_id for worker in idle.workers] == [stack.settings.worker_id]
    assert (idle.busy_workers, idle.idle_workers, idle.queued_jobs) == (0, 1, 0)
    assert not idle.HasField("median_run_duration")
    assert not (await _models(alice))["other-model"].workers  # nobody serves it

    held = (await alice.submit(**SMALL)).job.id
    waiting = [(await alice.submit(**SMALL)).job.id for _ in range(2)]
    await gate.wait_reached(1)

    async def busy() -> bool:
        status = (await _models(alice))[model]
        return status.busy_workers == 1

    await _until(busy)
    status = (await _models(alice))[model]
    assert (status.idle_workers, status.queued_jobs, status.running_jobs) == (0, 2, 1)
    assert status.workers[0].busy
    assert status.workers[0].HasField("job_start_time")
    gate.release(1)
    for job_id in [held, *waiting]:
        await _until(lambda job_id=job_id: _succeeded(alice, job_id))
    done = (await _models(alice))[model]
    assert (done.queued_jobs, done.running_jobs) == (0, 0)
    assert done.median_run_duration.ToTimedelta().total_seconds() > 0


async def _succeeded(caller: Caller, job_id: str) -> bool:
    return (await caller.get(job_id)).state == job_pb2.JOB_STATE_SUCCEEDED


async def test_no_worker_is_said_once_the_last_generator_stops(
    make_stack: StackFactory, callers: Callers
) -> None:
    stack = await make_stack(**_own_model())
    alice, events = await callers(stack, "alice-token")
    served = (await alice.submit(**SMALL)).job.id
    await _until(lambda: _succeeded(alice, served))
    queued = await alice.get((await alice.submit(model="other-model", **SMALL)).job.id)
    assert queued.queue.reason == job_pb2.WAIT_REASON_NO_WORKER
    assert queued.queue.detail == "waiting for a worker: none serves other-model now"

    assert stack.generator is not None
    await stack.generator.stop(stack.settings.shutdown_grace)
    stack.generator = None
    assert not (await _models(alice))[stack.settings.model_default].workers
    job_id = (await alice.submit(**SMALL)).job.id

    async def no_worker() -> bool:  # positions read capacity at most a second old
        return (await alice.get(job_id)).queue.reason == job_pb2.WAIT_REASON_NO_WORKER

    await _until(no_worker, timeout=5)
    job = await alice.get(job_id)
    assert not job.queue.HasField("estimated_start_time")
    # A watcher hears it too, in a position event.
    call = events.WatchJob(
        events_service_pb2.WatchJobRequest(job_id=job.id), metadata=alice.metadata, timeout=10
    )
    async with asyncio.timeout(5):
        async for response in call:
            if response.event.HasField("position"):
                assert response.event.position.queue.reason == job_pb2.WAIT_REASON_NO_WORKER
                assert response.event.event_id == ""  # live only: not a resume point
                break
    call.cancel()


async def test_a_watcher_sees_its_position_count_down_with_an_eta(
    make_stack: StackFactory, callers: Callers
) -> None:
    # A steady pipeline: every job takes the same 10 steps of 40 ms.
    stack = await make_stack(
        pipelines.FakePipeline(step_seconds=0.04),
        watch_position_interval=timedelta(milliseconds=50),
        **_own_model(),
    )
    alice, events = await callers(stack, "alice-token")
    spec: dict[str, Any] = {"width": 64, "height": 64, "steps": 10}
    for job_id in [(await alice.submit(**spec)).job.id for _ in range(3)]:  # run times known
        await _until(lambda job_id=job_id: _succeeded(alice, job_id))
    ahead = [(await alice.submit(**spec)).job.id for _ in range(6)]
    last = (await alice.submit(**spec)).job.id
    call = events.WatchJob(
        events_service_pb2.WatchJobRequest(job_id=last), metadata=alice.metadata, timeout=60
    )
    positions: list[job_pb2.QueueStatus] = []
    predicted: datetime | None = None
    started: datetime | None = None
    async for response in call:
        event = response.event
        if event.HasField("position"):
            positions.append(event.position.queue)
            if predicted is None and event.position.queue.HasField("estimated_start_time"):
                predicted = event.position.queue.estimated_start_time.ToDatetime(UTC)
        elif event.HasField("started"):
            started = event.time.ToDatetime(UTC)
        elif event.HasField("succeeded"):
            break
    counts = [status.jobs_ahead for status in positions]
    assert counts[0] >= 4  # most of the six still ahead when the watch began
    assert counts == sorted(counts, reverse=True)  # only ever down
    assert counts[-1] == 0
    assert positions[-1].detail in {"next to start", "starting"}  # (taken, being claimed)
    assert len(set(counts)) >= 3  # it was told as it moved, not only at the end
    assert all(status.reason == job_pb2.WAIT_REASON_QUEUED for status in positions)
    assert predicted is not None
    assert started is not None
    waited = (started - positions[0].estimated_start_time.ToDatetime(UTC)).total_seconds()
    run = 10 * 0.04
    # Within two runs' time of the first estimate, about six runs away: the estimate
    # leaves out the worker's own time between jobs (take, claim, upload, commit).
    assert abs(waited) < 2 * run + 0.5, (waited, counts)
    assert ahead  # (the jobs ahead ran in between)


async def test_priority_is_validated_recorded_and_filtered_on(
    make_stack: StackFactory, callers: Callers
) -> None:
    stack = await make_stack(generator=False)
    alice, _ = await callers(stack, "alice-token")
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await alice.submit(priority=11, **SMALL)
    assert rich_error(refused.value).violations == {
        "spec.priority": "must be from -10 to 10 (got 11)"
    }
    urgent = [(await alice.submit(priority=7, **SMALL)).job for _ in range(3)]
    assert urgent[0].spec.priority == 7
    page = await alice.list(priority=7, page_size=2)
    assert [job.id for job in page.jobs] == [job.id for job in reversed(urgent)][:2]
    rest = await alice.list(priority=7, page_size=2, page_token=page.next_page_token)
    assert [job.id for job in rest.jobs] == [urgent[0].id]
    with pytest.raises(grpc.aio.AioRpcError) as mismatched:  # a token is for its filter only
        await alice.list(priority=6, page_token=page.next_page_token)
    assert "page_token" in rich_error(mismatched.value).violations
    with pytest.raises(grpc.aio.AioRpcError) as out_of_range:
        await alice.list(priority=-11)
    assert rich_error(out_of_range.value).violations == {
        "priority": "must be from -10 to 10 (got -11)"
    }
