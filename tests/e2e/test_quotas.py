"""Admission through the real servers: every quota refuses with RESOURCE_EXHAUSTED,
QuotaFailure and RetryInfo, writes nothing, and leaves other owners alone."""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

import grpc
import pytest

from darkroom.config import OwnerPolicy
from darkroom.services.events.app import start as start_events
from darkroom.v1 import events_service_pb2, events_service_pb2_grpc, job_pb2
from tests.e2e.conftest import Callers, StackFactory
from tests.helpers import Caller, new_request_id, rich_error

RowCount = Callable[[], Awaitable[int]]
SMALL: dict[str, Any] = {"width": 64, "height": 64, "steps": 2}


async def _refused(caller: Caller, **spec: Any) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await caller.submit(**{**SMALL, **spec})
    return refused.value


async def test_the_queued_jobs_quota_refuses_with_details_and_writes_nothing(
    make_stack: StackFactory, callers: Callers, row_count: RowCount
) -> None:
    stack = await make_stack(generator=False, owner_policy=OwnerPolicy(max_queued=3))
    alice, _ = await callers(stack, "alice-token")
    bob, _ = await callers(stack, "bob-token")
    accepted = [await alice.submit(request_id=new_request_id(), **SMALL) for _ in range(3)]
    before = await row_count()
    error = rich_error(await _refused(alice))
    assert error.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert (error.reason, error.metadata) == ("QUOTA_EXCEEDED", {"limit": "max_queued"})
    assert error.quota == {"owner:alice": "at most 3 queued jobs"}
    assert error.retry_after == 5
    assert await row_count() == before
    # A retry of a submit already recorded is its replay, not a new job to refuse.
    again = await alice.submit(request_id=accepted[0].job.request_id, **SMALL)
    assert again.replayed
    assert again.job.id == accepted[0].job.id
    # Another owner is not held to alice's count.
    assert (await bob.submit(**SMALL)).job.state == job_pb2.JOB_STATE_QUEUED
    # One of alice's jobs leaves the queue: she may submit again.
    await alice.cancel(accepted[0].job.id)
    assert (await alice.submit(**SMALL)).job.state == job_pb2.JOB_STATE_QUEUED


async def test_the_submit_rate_refuses_until_a_token_is_back(
    make_stack: StackFactory, callers: Callers, row_count: RowCount
) -> None:
    policy = OwnerPolicy(submit_rate=2, submit_burst=2)
    stack = await make_stack(generator=False, owner_policy=policy)
    alice, _ = await callers(stack, "alice-token")
    await alice.submit(**SMALL)
    await alice.submit(**SMALL)
    before = await row_count()
    error = rich_error(await _refused(alice))
    assert (error.code, error.metadata) == (
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        {"limit": "submit_rate"},
    )
    assert error.quota == {"owner:alice": "at most 2 submits a second (bursts of 2)"}
    assert error.retry_after is not None
    assert 0 < error.retry_after <= 0.5
    assert await row_count() == before
    await asyncio.sleep(error.retry_after + 0.05)
    assert (await alice.submit(**SMALL)).job.state == job_pb2.JOB_STATE_QUEUED


async def test_a_full_model_queue_refuses_every_owner(
    make_stack: StackFactory, callers: Callers, row_count: RowCount
) -> None:
    stack = await make_stack(generator=False, model_max_queued=2)
    alice, _ = await callers(stack, "alice-token")
    bob, _ = await callers(stack, "bob-token")
    await alice.submit(**SMALL)
    await bob.submit(**SMALL)
    before = await row_count()
    for caller in (alice, bob):
        error = rich_error(await _refused(caller))
        assert error.metadata == {"limit": "model_max_queued"}
        assert error.quota == {"model:tiny-sd": "at most 2 queued jobs per model"}
    assert await row_count() == before
    # Another model's queue is its own.
    assert (await alice.submit(model="other-model", **SMALL)).job.spec.model == "other-model"


async def test_open_watch_streams_are_capped_per_owner(
    make_stack: StackFactory, callers: Callers
) -> None:
    stack = await make_stack(generator=False, owner_policy=OwnerPolicy(max_watches=2))
    alice, events = await callers(stack, "alice-token")
    bob, bob_events = await callers(stack, "bob-token")
    job_id = (await alice.submit(**SMALL)).job.id
    bob_job = (await bob.submit(**SMALL)).job.id

    async def watch(
        stub: events_service_pb2_grpc.EventsServiceAsyncStub, job: str, caller: Caller
    ) -> Any:
        call = stub.WatchJob(
            events_service_pb2.WatchJobRequest(job_id=job), metadata=caller.metadata, timeout=30
        )
        first = await call.read()
        assert isinstance(first, events_service_pb2.WatchJobResponse)
        assert first.event.WhichOneof("kind") == "snapshot"
        return call

    open_calls = [await watch(events, job_id, alice) for _ in range(2)]
    codes: set[grpc.StatusCode] = set()
    third = events.WatchJob(
        events_service_pb2.WatchJobRequest(job_id=job_id), metadata=alice.metadata, timeout=30
    )
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await third.read()
    error = rich_error(refused.value)
    assert (error.code, error.metadata) == (
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        {"limit": "max_watches"},
    )
    assert error.quota == {"owner:alice": "at most 2 open WatchJob streams"}
    assert error.retry_after == 5
    await watch(bob_events, bob_job, bob)  # bob's streams are his own
    open_calls[0].cancel()
    async with asyncio.timeout(10):  # the server counts the stream closed once it sees it
        while True:
            try:
                open_calls[0] = await watch(events, job_id, alice)
                break
            except grpc.aio.AioRpcError as again:
                codes = {again.code()}
                await asyncio.sleep(0.05)
    assert codes <= {grpc.StatusCode.RESOURCE_EXHAUSTED}
    for call in open_calls:
        call.cancel()


async def test_a_model_nobody_serves_is_refused_when_configured(
    make_stack: StackFactory, callers: Callers, row_count: RowCount
) -> None:
    stack = await make_stack(refuse_unserved_models=True)  # a generator serves tiny-sd
    alice, _ = await callers(stack, "alice-token")
    assert (await alice.submit(**SMALL)).job.spec.model == "tiny-sd"
    before = await row_count()
    error = rich_error(await _refused(alice, model="other-model"))
    assert (error.code, error.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "MODEL_NOT_SERVED")
    assert error.metadata == {"model": "other-model"}
    assert await row_count() == before


async def test_other_owners_submit_as_fast_while_one_owner_is_refused(
    make_stack: StackFactory, callers: Callers
) -> None:
    stack = await make_stack(
        generator=False,
        owner_policy=OwnerPolicy(max_queued=10_000),
        owner_policies={"bob": OwnerPolicy(max_queued=1)},
    )
    alice, _ = await callers(stack, "alice-token")
    bob, _ = await callers(stack, "bob-token")
    await bob.submit(**SMALL)

    async def alice_latencies(count: int) -> list[float]:
        latencies = []
        for _ in range(count):
            began = time.perf_counter()
            await alice.submit(**SMALL)
            latencies.append(time.perf_counter() - began)
        return latencies

    await alice_latencies(10)  # warm up
    alone = statistics.median(await alice_latencies(60))
    flooding = True
    refusals = 0
    codes: set[grpc.StatusCode] = set()

    async def flood() -> None:  # about 100 refused submits a second in all
        nonlocal refusals
        while flooding:
            try:
                await bob.submit(**SMALL)
            except grpc.aio.AioRpcError as error:
                codes.add(error.code())
                refusals += 1
            await asyncio.sleep(0.04)

    floods = [asyncio.create_task(flood()) for _ in range(4)]
    try:
        await asyncio.sleep(0.2)
        during = statistics.median(await alice_latencies(60))
    finally:
        flooding = False
        await asyncio.gather(*floods)
    assert refusals > 20
    assert codes == {grpc.StatusCode.RESOURCE_EXHAUSTED}
    # The flood shares this one process (client, server and all) with alice's calls, yet
    # her median stays close: a refusal is one Redis script and one indexed read (is it a
    # retry of a recorded submit?), no lock and no write.
    assert during < alone * 3, (alone, during)


async def test_the_watch_cap_counts_every_events_server(
    make_stack: StackFactory, callers: Callers
) -> None:
    stack = await make_stack(generator=False, owner_policy=OwnerPolicy(max_watches=2))
    alice, events = await callers(stack, "alice-token")
    job_id = (await alice.submit(**SMALL)).job.id
    other = await start_events(stack.settings, "127.0.0.1:0")
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{other.port}") as channel:
            elsewhere = events_service_pb2_grpc.EventsServiceStub(channel)
            request = events_service_pb2.WatchJobRequest(job_id=job_id)
            held = [events.WatchJob(request, metadata=alice.metadata, timeout=30) for _ in "ab"]
            for call in held:
                await _snapshot(call)
            await asyncio.sleep(2.5)  # the servers share their counts once a second
            refused = elsewhere.WatchJob(request, metadata=alice.metadata, timeout=30)
            with pytest.raises(grpc.aio.AioRpcError) as over:
                await refused.read()
            assert rich_error(over.value).metadata == {"limit": "max_watches"}
            held[0].cancel()
            await asyncio.sleep(2.5)
            admitted = elsewhere.WatchJob(request, metadata=alice.metadata, timeout=30)
            await _snapshot(admitted)
            admitted.cancel()
            held[1].cancel()
    finally:
        await other.stop(timedelta(seconds=1))


async def _snapshot(call: Any) -> None:
    first = await call.read()
    assert isinstance(first, events_service_pb2.WatchJobResponse)
    assert first.event.HasField("snapshot")
