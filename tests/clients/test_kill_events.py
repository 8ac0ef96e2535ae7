"""A user who kills the Events server during `darkroom generate` still gets the image."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from datetime import timedelta
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from PIL import Image

from darkroom.services.events.app import start as start_events
from tests.clients.conftest import REPO_ROOT, GatedPipeline, Stack, StackFactory


async def _events_process(stack: Stack, port: int) -> asyncio.subprocess.Process:
    s = stack.settings
    env = {
        **os.environ,
        "DARKROOM_DATABASE_URL": s.database_url,
        "DARKROOM_REDIS_URL": s.redis_url,
        "DARKROOM_KEY_PREFIX": s.key_prefix,
        "DARKROOM_STORAGE_URL": s.storage_url,
        "DARKROOM_EVENTS_ADDRESS": f"127.0.0.1:{port}",
        "DARKROOM_AUTH_TOKENS": json.dumps(s.auth_tokens),
        "DARKROOM_MODELS": json.dumps(s.models),
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "darkroom.services.events",
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        async with asyncio.timeout(30):
            while True:
                try:
                    await health.Check(health_pb2.HealthCheckRequest(), timeout=1)
                    return process
                except grpc.aio.AioRpcError:
                    await asyncio.sleep(0.1)


async def test_generate_survives_the_events_process_being_killed(
    make_stack: StackFactory, tmp_path: Path
) -> None:
    pipeline = GatedPipeline(3)
    stack = await make_stack(pipeline)
    port = stack.events.port
    # The events server runs as a real process on the stack's events port.
    await stack.events.stop(timedelta(0))
    first = await _events_process(stack, port)
    env = stack.env()
    env["PYTHONPATH"] = str(REPO_ROOT)
    out = tmp_path / "survivor.png"
    cli = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "darkroom_client.cli", "generate", "survive", "--width", "64",
        "--height", "64", "--steps", "6", "-o", str(out),
        env=env, cwd=REPO_ROOT,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    second = None
    try:
        await pipeline.wait_reached(3)
        first.kill()
        await first.wait()
        second = await _events_process(stack, port)
        pipeline.release(3)
        stdout, stderr = await asyncio.wait_for(cli.communicate(), timeout=60)
    finally:
        for process in (cli, first, second):
            if process is not None and process.returncode is None:
                process.kill()
                await process.wait()
        # The fixture closes stack.events when the test ends: give it one to close.
        stack.events = await start_events(stack.settings, "127.0.0.1:0")
    assert cli.returncode == 0, stderr.decode()[-2000:]
    assert str(out) in stdout.decode()
    with Image.open(out) as image:
        assert image.size == (64, 64)
