"""What every server offers operators: health, reflection (driven by a real grpcurl),
rich errors for unexpected failures, UNAVAILABLE when dependencies are down."""

from __future__ import annotations

import asyncio
import json
import sys
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from darkroom import devservers
from darkroom.config import Settings
from darkroom.services.jobs.app import JobsApp, start
from darkroom.v1 import job_pb2, jobs_service_pb2_grpc
from tests.helpers import Caller, rich_error

GRPCURL = str(Path(sys.executable).with_name("grpcurl"))


async def grpcurl(port: int, *args: str, options: tuple[str, ...] = ()) -> tuple[int, str, str]:
    """Run the real grpcurl: `grpcurl -plaintext OPTIONS ADDRESS ARGS`."""
    process = await asyncio.create_subprocess_exec(
        GRPCURL,
        "-plaintext",
        *options,
        f"127.0.0.1:{port}",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode is not None
    return process.returncode, stdout.decode(), stderr.decode()


@pytest.mark.parametrize("service", ["", "darkroom.v1.JobsService"])
async def test_health_is_serving(jobs_channel: grpc.aio.Channel, service: str) -> None:
    stub = health_pb2_grpc.HealthStub(jobs_channel)
    response = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
    assert response.status == health_pb2.HealthCheckResponse.SERVING


async def test_grpcurl_lists_and_describes_through_reflection(jobs_app: JobsApp) -> None:
    code, out, err = await grpcurl(jobs_app.port, "list")
    assert code == 0, err
    services = set(out.split())
    assert {"darkroom.v1.JobsService", "grpc.health.v1.Health"} <= services
    code, out, err = await grpcurl(jobs_app.port, "describe", "darkroom.v1.JobsService")
    assert code == 0, err
    for rpc in ("SubmitJob", "GetJob", "ListJobs", "CancelJob"):
        assert f"rpc {rpc}" in out


async def test_grpcurl_submits_and_gets_a_job(jobs_app: JobsApp) -> None:
    request_id = str(uuid.uuid4())
    body = json.dumps({"requestId": request_id, "spec": {"prompt": "via grpcurl", "seed": 42}})
    auth = ("-H", "authorization: Bearer alice-token")
    code, out, err = await grpcurl(
        jobs_app.port, "darkroom.v1.JobsService/SubmitJob", options=(*auth, "-d", body)
    )
    assert code == 0, err
    job = json.loads(out)["job"]
    assert job["state"] == "JOB_STATE_QUEUED"
    assert job["spec"]["seed"] == "42"
    code, out, err = await grpcurl(
        jobs_app.port,
        "darkroom.v1.JobsService/GetJob",
        options=(*auth, "-d", json.dumps({"jobId": job["id"]})),
    )
    assert code == 0, err
    assert json.loads(out)["job"]["id"] == job["id"]


async def test_grpcurl_shows_field_violations(jobs_app: JobsApp) -> None:
    body = json.dumps({"requestId": str(uuid.uuid4()), "spec": {"prompt": "", "width": 7}})
    code, _, err = await grpcurl(
        jobs_app.port,
        "darkroom.v1.JobsService/SubmitJob",
        options=("-H", "authorization: Bearer alice-token", "-d", body),
    )
    assert code != 0
    assert "InvalidArgument" in err
    assert "spec.prompt" in err
    assert "spec.width" in err


@pytest.fixture
async def app_with(settings: Settings) -> AsyncIterator[Any]:
    """Start extra Jobs apps with changed settings; all are closed afterwards."""
    started: list[JobsApp] = []

    async def make(**changes: Any) -> Caller:
        changed = settings.model_copy(update=changes)
        app = await start(changed, "127.0.0.1:0")
        started.append(app)
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{app.port}")
        channels.append(channel)
        return Caller(jobs_service_pb2_grpc.JobsServiceStub(channel), "alice-token")

    channels: list[grpc.aio.Channel] = []
    yield make
    for channel in channels:
        await channel.close()
    for app in started:
        await app.stop(timedelta(0))


async def test_database_down_is_unavailable(app_with: Any) -> None:
    port = devservers.free_port()
    caller = await app_with(database_url=f"postgresql+psycopg://postgres@127.0.0.1:{port}/x")
    for call in (caller.submit(), caller.get(str(uuid.uuid4())), caller.list()):
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await call
        error = rich_error(raised.value)
        assert error.code == grpc.StatusCode.UNAVAILABLE
        assert error.reason == "DEPENDENCY_UNAVAILABLE"


async def test_redis_down_still_accepts_and_keeps_the_row(app_with: Any, alice: Caller) -> None:
    port = devservers.free_port()
    caller = await app_with(redis_url=f"redis://127.0.0.1:{port}/0")
    job = (await caller.submit(prompt="redis is down")).job
    assert job.state == job_pb2.JOB_STATE_QUEUED
    # The row is durable and visible through the healthy server too.
    assert (await alice.get(job.id)).id == job.id


async def test_unexpected_errors_are_internal_without_details(
    jobs_app: JobsApp, alice: Caller, monkeypatch: pytest.MonkeyPatch
) -> None:
    servicer = jobs_app.servicer

    async def explode(*args: object, **kwargs: object) -> None:
        raise RuntimeError("secret connection string postgres://admin:hunter2@db")

    monkeypatch.setattr(servicer.store, "get", explode)
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await alice.get(str(uuid.uuid4()))
    error = rich_error(raised.value)
    assert error.code == grpc.StatusCode.INTERNAL
    assert "hunter2" not in error.message
    assert "hunter2" not in str(raised.value.trailing_metadata())
