"""`make up` / `make down`: the stack starts, serves a job end to end, and leaves nothing."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import grpc

from darkroom import devservers
from darkroom.config import Settings
from darkroom.v1 import job_pb2, jobs_service_pb2, jobs_service_pb2_grpc
from tests.conftest import drop_database
from tests.helpers import RUN_ID


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    status = Path(f"/proc/{pid}/status")
    return not (status.exists() and "\nState:\tZ" in status.read_text())


def _port_open(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def test_up_serves_a_job_and_down_leaves_no_process(
    tmp_path: Path, postgres_admin_url: str, settings: Settings, tiny_model_path: Path
) -> None:
    jobs_port, events_port = devservers.free_port(), devservers.free_port()
    database = f"darkroom_stack_{RUN_ID}"
    env = {
        **os.environ,
        "DARKROOM_STACK_HOME": str(tmp_path),
        "DARKROOM_STACK_POSTGRES_URL": postgres_admin_url,
        "DARKROOM_STACK_REDIS_URL": settings.redis_url,
        "DARKROOM_STACK_DATABASE": database,
        "DARKROOM_STACK_JOBS_PORT": str(jobs_port),
        "DARKROOM_STACK_EVENTS_PORT": str(events_port),
        "DARKROOM_STACK_GATEWAY_PORT": str(devservers.free_port()),
        "DARKROOM_KEY_PREFIX": f"{settings.key_prefix}-stack",
        "DARKROOM_GENERATOR_MODEL_PATH": str(tiny_model_path),
        "DARKROOM_GENERATOR_DEVICE": "cpu",
    }
    command = [sys.executable, "-m", "darkroom.services.stack"]
    try:
        subprocess.run([*command, "up"], env=env, check=True, timeout=120)
        state = json.loads((tmp_path / "stack.json").read_text())
        pids = [int(pid) for pid in state["pids"].values()]
        # Jobs, Events, a Generator, the reconciler, the gateway, the webhook delivery worker
        assert len(pids) == 6
        assert all(_alive(pid) for pid in pids)
        with grpc.insecure_channel(f"127.0.0.1:{jobs_port}") as channel:
            stub = jobs_service_pb2_grpc.JobsServiceStub(channel)
            auth = (("authorization", "Bearer darkroom-dev-token"),)
            job = stub.SubmitJob(
                jobs_service_pb2.SubmitJobRequest(
                    request_id=str(uuid.uuid4()),
                    spec=job_pb2.JobSpec(prompt="stack", width=64, height=64, steps=2),
                ),
                metadata=auth,
                timeout=10,
            ).job
            deadline = time.monotonic() + 60
            while job.state != job_pb2.JOB_STATE_SUCCEEDED and time.monotonic() < deadline:
                time.sleep(0.1)
                job = stub.GetJob(
                    jobs_service_pb2.GetJobRequest(job_id=job.id), metadata=auth, timeout=10
                ).job
        assert job.state == job_pb2.JOB_STATE_SUCCEEDED
        assert Path(job.outputs[0].uri.removeprefix("file://")).is_file()
    finally:
        subprocess.run([*command, "down"], env=env, check=True, timeout=120)
        drop_database(postgres_admin_url, database)
    assert not (tmp_path / "stack.json").exists()
    assert not any(_alive(pid) for pid in pids)
    assert not _port_open(jobs_port)
    assert not _port_open(events_port)


def test_up_refuses_a_taken_port_naming_it(tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        env = {
            **os.environ,
            "DARKROOM_STACK_HOME": str(tmp_path),
            "DARKROOM_STACK_JOBS_PORT": str(port),
            "DARKROOM_STACK_EVENTS_PORT": str(devservers.free_port()),
        }
        result = subprocess.run(
            [sys.executable, "-m", "darkroom.services.stack", "up"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert result.returncode != 0
    assert f"port {port} (for Jobs) is taken" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "stack.json").exists()


def test_two_checkouts_get_their_own_database_and_key_prefix(tmp_path: Path) -> None:
    def names(home: Path) -> list[str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("DARKROOM_")}
        env["DARKROOM_STACK_HOME"] = str(home)
        script = (
            "from darkroom.services.stack.__main__ import DATABASE, KEY_PREFIX; "
            "print(DATABASE, KEY_PREFIX)"
        )
        printed = subprocess.run(
            [sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True
        )
        return printed.stdout.split()

    first, second = names(tmp_path / "a" / ".darkroom"), names(tmp_path / "b" / ".darkroom")
    assert first[0].startswith("darkroom_local_")
    assert first[1].startswith("darkroom-")
    assert first[0] != second[0]
    assert first[1] != second[1]
    assert names(tmp_path / "a" / ".darkroom") == first
