"""Many watchers on one process share a fixed, small set of Redis connections."""

from __future__ import annotations

import asyncio
import os
import uuid
from datetime import timedelta

import grpc
import pytest
import redis.asyncio

from darkroom import devservers, events
from darkroom.config import Settings
from darkroom.convert import job_to_proto
from darkroom.events import EventLog
from darkroom.models import State
from darkroom.queue import connect
from darkroom.services.events.app import EventsApp
from darkroom.services.events.app import start as start_events
from darkroom.services.jobs.app import start as start_jobs
from darkroom.store import JobStore
from darkroom.v1 import events_service_pb2, events_service_pb2_grpc, job_pb2, jobs_service_pb2_grpc
from tests.helpers import Caller
from tests.services.events.conftest import metadata, next_event, read_rest

WATCHERS = 1000
JOBS = 250
CHANNELS = 10


async def _events_connections(client: redis.asyncio.Redis) -> int:
    clients = await client.client_list()
    return sum(1 for c in clients if c.get("name") == f"darkroom-events-{os.getpid()}")


async def test_a_thousand_watchers_share_at_most_four_redis_connections(
    events_app: EventsApp,
    alice: Caller,
    store: JobStore,
    event_log: EventLog,
    redis_client: redis.asyncio.Redis,
) -> None:
    jobs = [(await alice.submit(prompt=f"fan-out {i}")).job.id for i in range(JOBS)]
    channels = [grpc.aio.insecure_channel(f"127.0.0.1:{events_app.port}") for _ in range(CHANNELS)]
    stubs = [events_service_pb2_grpc.EventsServiceStub(channel) for channel in channels]
    calls = [
        stubs[i % CHANNELS].WatchJob(
            events_service_pb2.WatchJobRequest(job_id=jobs[i % JOBS]),
            metadata=metadata(),
            timeout=120,
        )
        for i in range(WATCHERS)
    ]
    try:
        first = await asyncio.gather(*(next_event(call) for call in calls))
        assert all(event.WhichOneof("kind") == "snapshot" for event in first)
        assert events_app.notifier.watcher_count >= WATCHERS
        assert await _events_connections(redis_client) <= 4

        for job_id in jobs:
            row = await store.claim(uuid.UUID(job_id), 0, "fan-out", timedelta(minutes=1))
            assert row is not None
            await event_log.append(events.progress(job_id, 1, 1, 1))
            done = await store.succeed(uuid.UUID(job_id), 1, [], "m", "v")
            assert done is not None
            assert done.state == State.SUCCEEDED
            await event_log.append(events.terminal(job_to_proto(done)))

        async def rest(call: object) -> list[str]:
            return [str(event.WhichOneof("kind")) for event in await read_rest(call)]

        tails = await asyncio.gather(*(rest(call) for call in calls))
        assert all(tail == ["progress", "succeeded"] for tail in tails), tails[:3]
        assert await _events_connections(redis_client) <= 4
    finally:
        for call in calls:
            call.cancel()
        for channel in channels:
            await channel.close()


async def test_flushall_during_a_watch_still_delivers_the_terminal(settings: Settings) -> None:
    # FLUSHALL needs a Redis of our own: the run must not touch data it did not create.
    server = devservers.redis_server("redis://127.0.0.1:1/0", force_throwaway=True)
    own = settings.model_copy(
        update={
            "redis_url": server.url,
            "watch_row_poll": timedelta(milliseconds=100),
            "shutdown_grace": timedelta(seconds=1),
        }
    )
    jobs = await start_jobs(own, "127.0.0.1:0")
    events_app = await start_events(own, "127.0.0.1:0")
    writer = connect(own)
    log = EventLog(writer, own.key_prefix)
    store = jobs.servicer.store
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{jobs.port}") as jobs_channel:
            caller = Caller(jobs_service_pb2_grpc.JobsServiceStub(jobs_channel), "alice-token")
            job_id = (await caller.submit(prompt="flushed")).job.id
        async with grpc.aio.insecure_channel(f"127.0.0.1:{events_app.port}") as channel:
            stub = events_service_pb2_grpc.EventsServiceStub(channel)
            call = stub.WatchJob(
                events_service_pb2.WatchJobRequest(job_id=job_id), metadata=metadata(), timeout=60
            )
            received = [await next_event(call)]
            row = await store.claim(uuid.UUID(job_id), 0, "w", timedelta(minutes=1))
            assert row is not None
            await log.append(events.started(job_id, 1, "w"))
            received.append(await next_event(call))
            await writer.flushall()
            done = await store.succeed(uuid.UUID(job_id), 1, [], "m", "v")
            assert done is not None
            received += await read_rest(call)
        kinds = [event.WhichOneof("kind") for event in received]
        assert kinds[:2] == ["snapshot", "started"]
        assert kinds[-1] == "snapshot"
        assert received[-1].snapshot.job.state == job_pb2.JOB_STATE_SUCCEEDED
    finally:
        await writer.aclose()
        await writer.connection_pool.disconnect()
        await events_app.stop(own.shutdown_grace)
        await jobs.stop(own.shutdown_grace)
        server.close()


async def test_shutdown_ends_open_streams_with_unavailable(
    settings: Settings, alice: Caller
) -> None:
    app = await start_events(settings, "127.0.0.1:0")
    job_id = (await alice.submit(prompt="shutdown")).job.id
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
        stub = events_service_pb2_grpc.EventsServiceStub(channel)
        call = stub.WatchJob(
            events_service_pb2.WatchJobRequest(job_id=job_id), metadata=metadata(), timeout=30
        )
        assert (await next_event(call)).WhichOneof("kind") == "snapshot"
        closing = asyncio.create_task(app.stop(timedelta(seconds=5)))
        with pytest.raises(grpc.aio.AioRpcError) as ended:
            await read_rest(call)
        assert ended.value.code() == grpc.StatusCode.UNAVAILABLE
        await closing


async def test_a_silent_job_that_ended_without_its_event_is_noticed(
    settings: Settings, alice: Caller, store: JobStore
) -> None:
    app = await start_events(
        settings.model_copy(update={"watch_idle_check": timedelta(milliseconds=300)}),
        "127.0.0.1:0",
    )
    job_id = (await alice.submit(prompt="silent")).job.id
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
            stub = events_service_pb2_grpc.EventsServiceStub(channel)
            call = stub.WatchJob(
                events_service_pb2.WatchJobRequest(job_id=job_id), metadata=metadata(), timeout=30
            )
            assert (await next_event(call)).WhichOneof("kind") == "snapshot"
            row = await store.claim(uuid.UUID(job_id), 0, "w", timedelta(minutes=1))
            assert row is not None
            assert await store.end(uuid.UUID(job_id), 1, State.FAILED, 13, "boom") is not None
            rest = await read_rest(call)
        assert [e.WhichOneof("kind") for e in rest] == ["snapshot"]
        assert rest[0].snapshot.job.state == job_pb2.JOB_STATE_FAILED
    finally:
        await app.stop(timedelta(seconds=1))
