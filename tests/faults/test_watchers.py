"""Bursts of watchers against one Events process: every WatchJob call either opens or is
refused with RESOURCE_EXHAUSTED and a retry hint; none ends CANCELLED before a handler
saw it (gRPC core drops a backlog of unaccepted calls that way by default)."""

from __future__ import annotations

import asyncio
import collections
import json
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status

from darkroom import devservers
from darkroom.config import OwnerPolicy
from darkroom.v1 import events_service_pb2, events_service_pb2_grpc, job_pb2
from tests.faults.cluster import Cluster

# The burst item 7 of issue 14 names: far past gRPC core's default backlog of 1,000.
BURST = 10_000
CHANNELS = 50
METADATA = (("authorization", "Bearer alice-token"),)
DEFAULT_MAX_WATCHES: int = OwnerPolicy.model_fields["max_watches"].default


async def _events_process(cluster: Cluster, max_watches: int) -> int:
    """`python -m darkroom.services.events` on a free port, once it serves; the port."""
    port = devservers.free_port()
    await cluster.spawn(
        "darkroom.services.events",
        DARKROOM_EVENTS_ADDRESS=f"127.0.0.1:{port}",
        DARKROOM_AUTH_TOKENS=json.dumps({"alice-token": "alice"}),
        DARKROOM_OWNER_POLICY=json.dumps({"max_watches": max_watches}),
    )
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        async with asyncio.timeout(30):
            while True:
                try:
                    answer = await health.Check(health_pb2.HealthCheckRequest(), timeout=1)
                    if answer.status == health_pb2.HealthCheckResponse.SERVING:
                        return port
                except grpc.aio.AioRpcError:
                    pass
                await asyncio.sleep(0.1)


def _has_retry_hint(error: grpc.aio.AioRpcError) -> bool:
    status = rpc_status.from_call(error)
    return status is not None and any(
        detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR) for detail in status.details
    )


async def _first(call: Any) -> str:
    """How a call began: "open" (its snapshot came) or the status it ended with."""
    try:
        response = await call.read()
    except grpc.aio.AioRpcError as error:
        if error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and not _has_retry_hint(error):
            return "RESOURCE_EXHAUSTED without a retry hint"
        return str(error.code().name)
    if response is grpc.aio.EOF:
        return f"ended {(await call.code()).name}"
    assert response.event.WhichOneof("kind") == "snapshot"
    return "open"


# The default limit of an owner's open streams (9,000 of the burst are refused by the
# handler), and none: then every call of the burst opens (about 40 s on 2 busy cores).
@pytest.mark.parametrize("max_watches", [DEFAULT_MAX_WATCHES, 0], ids=["default-limit", "no-limit"])
@pytest.mark.timeout(240)  # past the suite's 120 s: a loaded machine can double the 40 s
async def test_a_burst_of_watches_opens_them_all_or_refuses_them_plainly(
    cluster: Cluster, max_watches: int
) -> None:
    job_id = await cluster.submit()  # no generator runs: it stays queued, streams stay open
    assert (await cluster.caller.get(job_id)).state == job_pb2.JOB_STATE_QUEUED
    port = await _events_process(cluster, max_watches)
    # Each channel on a connection of its own, as 50 client processes would be.
    options = [("grpc.use_local_subchannel_pool", 1)]
    channels = [
        grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=options) for _ in range(CHANNELS)
    ]
    calls: list[Any] = []
    try:
        for channel in channels:
            await asyncio.wait_for(channel.channel_ready(), 10)
        stubs = [events_service_pb2_grpc.EventsServiceStub(channel) for channel in channels]
        request = events_service_pb2.WatchJobRequest(job_id=job_id)
        calls = [
            stubs[n % CHANNELS].WatchJob(request, metadata=METADATA, timeout=300)
            for n in range(BURST)
        ]
        async with asyncio.timeout(200):
            outcomes = collections.Counter(await asyncio.gather(*map(_first, calls)))
        assert set(outcomes) <= {"open", "RESOURCE_EXHAUSTED"}, outcomes
        assert outcomes["open"] == (max_watches or BURST), outcomes
        await asyncio.sleep(1)
        still_open = sum(1 for call in calls if not call.done())
        assert still_open == outcomes["open"]
    finally:
        for call in calls:
            call.cancel()
        for channel in channels:
            await channel.close()
