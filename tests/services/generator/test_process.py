"""The Generator as a real process: loads the model, takes work, hands it back on SIGTERM."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import tempfile
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import grpc
import pytest

from darkroom.config import Settings
from darkroom.services.jobs.app import JobsApp
from darkroom.services.jobs.app import start as start_jobs
from darkroom.v1 import job_pb2, jobs_service_pb2_grpc
from tests.helpers import Caller


@pytest.fixture
async def jobs(settings: Settings) -> AsyncIterator[tuple[JobsApp, Caller, Settings]]:
    own = settings.model_copy(
        update={
            "key_prefix": f"{settings.key_prefix}-process",
            "storage_url": tempfile.mkdtemp(prefix="darkroom-storage-"),
        }
    )
    app = await start_jobs(own, "127.0.0.1:0")
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
        yield app, Caller(jobs_service_pb2_grpc.JobsServiceStub(channel), "alice-token"), own
    await app.stop(timedelta(0))


async def _spawn(settings: Settings, model: str) -> asyncio.subprocess.Process:
    """`darkroom-generator` on the model at path `model`, or, for `fake:PACE`, the same
    process on the fake pipeline (see tests/fake_generator.py)."""
    env = {
        **os.environ,
        "DARKROOM_DATABASE_URL": settings.database_url,
        "DARKROOM_REDIS_URL": settings.redis_url,
        "DARKROOM_KEY_PREFIX": settings.key_prefix,
        "DARKROOM_STORAGE_URL": settings.storage_url,
        "DARKROOM_MODELS": json.dumps(settings.models),
        "DARKROOM_GENERATOR_MODEL_PATH": model,
        "DARKROOM_SHUTDOWN_GRACE": "0.2",
        "DARKROOM_LOG_JSON": "true",
    }
    if model.startswith("fake:"):
        command = ["-m", "tests.fake_generator", model.removeprefix("fake:")]
    else:
        command = ["-m", "darkroom.services.generator"]
    return await asyncio.create_subprocess_exec(
        sys.executable, *command, env=env, stderr=asyncio.subprocess.PIPE
    )


async def _wait_state(
    caller: Caller, job_id: str, state: int, process: asyncio.subprocess.Process
) -> job_pb2.Job:
    async with asyncio.timeout(90):
        while (job := await caller.get(job_id)).state != state:
            if process.returncode is not None:
                stderr = await process.stderr.read() if process.stderr else b""
                raise AssertionError(f"the generator exited: {stderr.decode()[-2000:]}")
            await asyncio.sleep(0.05)
    return job


async def test_sigterm_hands_the_running_job_back_and_exits_cleanly(
    jobs: tuple[JobsApp, Caller, Settings],
) -> None:
    _, caller, settings = jobs
    job = (await caller.submit(width=64, height=64, steps=150)).job
    process = await _spawn(settings, "fake:step_ms=50")
    try:
        await _wait_state(caller, job.id, job_pb2.JOB_STATE_RUNNING, process)
        process.send_signal(signal.SIGTERM)
        _, stderr = await asyncio.wait_for(process.communicate(), timeout=60)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode == 0, stderr.decode()[-2000:]
    lines = [json.loads(line) for line in stderr.decode().splitlines() if line.startswith("{")]
    assert lines[-1]["event"] == "process_stopped"
    back = await caller.get(job.id)
    assert back.state == job_pb2.JOB_STATE_QUEUED
    assert back.attempt == 1
    assert back.error.message == "the worker shut down"


async def test_loads_the_tiny_model_from_a_folder_and_generates(
    jobs: tuple[JobsApp, Caller, Settings], tiny_model_path: Path
) -> None:
    _, caller, settings = jobs
    process = await _spawn(settings, str(tiny_model_path))
    try:
        job = (await caller.submit(width=64, height=64, steps=2)).job
        done = await _wait_state(caller, job.id, job_pb2.JOB_STATE_SUCCEEDED, process)
        process.send_signal(signal.SIGTERM)
        await asyncio.wait_for(process.communicate(), timeout=60)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode == 0
    assert done.model_id == str(tiny_model_path.resolve())
    assert Path(done.outputs[0].uri.removeprefix("file://")).is_file()


async def test_a_model_that_cannot_load_stops_the_worker(
    jobs: tuple[JobsApp, Caller, Settings], tmp_path: Path
) -> None:
    _, _, settings = jobs
    process = await _spawn(settings, str(tmp_path / "no-such-model"))
    _, stderr = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode != 0
    assert b"no-such-model" in stderr
