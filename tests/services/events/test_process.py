"""The Events service as a real process: serves watches, ends them with UNAVAILABLE on SIGTERM."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from darkroom import devservers
from darkroom.config import Settings
from darkroom.v1 import events_service_pb2, events_service_pb2_grpc
from tests.helpers import Caller
from tests.services.events.conftest import metadata, next_event, read_rest


async def test_sigterm_ends_open_watches_with_unavailable(
    settings: Settings, alice: Caller
) -> None:
    port = devservers.free_port()
    env = {
        **os.environ,
        "DARKROOM_DATABASE_URL": settings.database_url,
        "DARKROOM_REDIS_URL": settings.redis_url,
        "DARKROOM_KEY_PREFIX": settings.key_prefix,
        "DARKROOM_EVENTS_ADDRESS": f"127.0.0.1:{port}",
        "DARKROOM_AUTH_TOKENS": json.dumps(settings.auth_tokens),
        "DARKROOM_MODELS": json.dumps(settings.models),
        "DARKROOM_LOG_JSON": "true",
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "darkroom.services.events", env=env, stderr=asyncio.subprocess.PIPE
    )
    job_id = (await alice.submit(prompt="process watch")).job.id
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            async with asyncio.timeout(30):
                while True:
                    try:
                        await health.Check(health_pb2.HealthCheckRequest(), timeout=1)
                        break
                    except grpc.aio.AioRpcError:
                        await asyncio.sleep(0.1)
            stub = events_service_pb2_grpc.EventsServiceStub(channel)
            call = stub.WatchJob(
                events_service_pb2.WatchJobRequest(job_id=job_id), metadata=metadata(), timeout=30
            )
            assert (await next_event(call)).WhichOneof("kind") == "snapshot"
            process.send_signal(signal.SIGTERM)
            with pytest.raises(grpc.aio.AioRpcError) as ended:
                await read_rest(call)
            assert ended.value.code() == grpc.StatusCode.UNAVAILABLE
        _, stderr = await asyncio.wait_for(process.communicate(), timeout=30)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode == 0, stderr.decode()[-2000:]
    lines = [json.loads(line) for line in stderr.decode().splitlines() if line.startswith("{")]
    rpc = [line for line in lines if line["event"] == "rpc"]
    assert rpc[-1]["method"] == "WatchJob"
    assert rpc[-1]["code"] == "UNAVAILABLE"
    assert rpc[-1]["job_id"] == job_id
    assert lines[-1]["event"] == "process_stopped"
