"""The Jobs service as a real process: starts, serves, logs JSON and stops on SIGTERM."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from darkroom import devservers
from darkroom.config import Settings
from darkroom.v1 import jobs_service_pb2_grpc
from tests.helpers import Caller


def _env(settings: Settings, port: int, **extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "DARKROOM_DATABASE_URL": settings.database_url,
        "DARKROOM_REDIS_URL": settings.redis_url,
        "DARKROOM_KEY_PREFIX": settings.key_prefix,
        "DARKROOM_JOBS_ADDRESS": f"127.0.0.1:{port}",
        "DARKROOM_AUTH_TOKENS": json.dumps(settings.auth_tokens),
        "DARKROOM_MODELS": json.dumps(settings.models),
        **extra,
    }


async def _wait_serving(port: int) -> grpc.aio.Channel:
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    stub = health_pb2_grpc.HealthStub(channel)
    async with asyncio.timeout(30):
        while True:
            try:
                response = await stub.Check(health_pb2.HealthCheckRequest(), timeout=1)
                if response.status == health_pb2.HealthCheckResponse.SERVING:
                    return channel
            except grpc.aio.AioRpcError:
                pass
            await asyncio.sleep(0.1)


async def test_serves_then_stops_gracefully_on_sigterm(settings: Settings) -> None:
    port = devservers.free_port()
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "darkroom.services.jobs",
        env=_env(settings, port),
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        channel = await _wait_serving(port)
        caller = Caller(jobs_service_pb2_grpc.JobsServiceStub(channel), "alice-token")
        job = (await caller.submit(prompt="from a real process")).job
        await channel.close()
        process.send_signal(signal.SIGTERM)
        _, raw_stderr = await asyncio.wait_for(process.communicate(), timeout=30)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    stderr = raw_stderr.decode()
    assert process.returncode == 0, stderr
    lines = [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]
    names = [line["event"] for line in lines]
    assert "server_started" in names
    assert names[-1] == "process_stopped"
    assert any(
        line.get("job_id") == job.id and line["method"] == "SubmitJob" and line["code"] == "OK"
        for line in lines
        if line["event"] == "rpc"
    )


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("DARKROOM_MAX_ATTEMPTS", "0"),
        ("DARKROOM_AUTH_TOKENS", "not json"),
        ("DARKROOM_DEFAULT_MODEL", "missing-model"),
    ],
)
def test_bad_setting_fails_at_start_naming_it(
    settings: Settings, variable: str, value: str
) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "darkroom.services.jobs"],
        env=_env(settings, devservers.free_port(), **{variable: value}),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "invalid configuration" in result.stderr
    assert variable in result.stderr
    assert "Traceback" not in result.stderr


async def test_a_taken_port_fails_at_start_naming_it(settings: Settings) -> None:
    # The holder sets SO_REUSEPORT, as another gRPC server does by default: a server that
    # also set it would bind beside it silently and share its connections.
    holder = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    port = holder.getsockname()[1]
    try:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "darkroom.services.jobs",
            env=_env(settings, port),
            stderr=asyncio.subprocess.PIPE,
        )
        async with asyncio.timeout(60):
            _, stderr = await process.communicate()
    finally:
        holder.close()
    assert process.returncode == 1
    message = stderr.decode().strip().splitlines()[-1]
    assert message.startswith(f"darkroom-jobs: cannot listen on 127.0.0.1:{port}: port {port}")
    assert "Traceback" not in stderr.decode()
