"""A client in another language, built from `protos/` and `third_party/googleapis/` alone.

The TypeScript client in `clients/typescript/` gets its types from `proto-loader-gen-types`
and its messages from `@grpc/proto-loader`, both fed only the .proto files. It is generated
and compiled once per module into a temporary folder, then run with `node` against a real
stack: it submits a job and watches it, resumes a watch after an event id, and decodes the
`google.rpc` details of an invalid submit from the `grpc-status-details-bin` trailer.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio

from darkroom import events
from tests.clients.conftest import REPO_ROOT, GatedPipeline, Stack, StackFactory

NODE = shutil.which("node")
BIN = REPO_ROOT / "node_modules" / ".bin"
SOURCES = REPO_ROOT / "clients" / "typescript"
PROTO_FILES = (
    "darkroom/v1/jobs_service.proto",
    "darkroom/v1/events_service.proto",
    "google/rpc/status.proto",
    "google/rpc/error_details.proto",
)
# The options the client also loads its protos with (LOADER_OPTIONS in client.ts).
GEN_TYPES_OPTIONS = (
    "--grpcLib=@grpc/grpc-js",
    "--keepCase",
    "--longs=String",
    "--enums=String",
    "--defaults",
    "--oneofs",
)
TIMEOUT = 30

pytestmark = pytest.mark.skipif(NODE is None, reason="node is not installed (Node.js 18+)")


def _run(*args: str | Path, cwd: Path = REPO_ROOT) -> None:
    done = subprocess.run(
        [str(arg) for arg in args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, f"{args[0]} failed:\n{done.stdout}\n{done.stderr}"


@pytest.fixture(scope="module")
def client_js(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """clients/typescript, generated from the protos and compiled: its client.js."""
    for tool in ("proto-loader-gen-types", "tsc"):
        assert (BIN / tool).is_file(), f"{BIN / tool} is missing: run `make install` (npm ci)"
    build = tmp_path_factory.mktemp("typescript-client")
    for name in ("client.ts", "tsconfig.json"):
        shutil.copy(SOURCES / name, build / name)
    # Modules and types resolve from the repository's node_modules, as they do in place.
    (build / "node_modules").symlink_to(REPO_ROOT / "node_modules", target_is_directory=True)
    _run(
        BIN / "proto-loader-gen-types",
        *GEN_TYPES_OPTIONS,
        "-I",
        "protos",
        "-I",
        "third_party/googleapis",
        "-O",
        build / "generated",
        *PROTO_FILES,
    )
    _run(BIN / "tsc", "-p", build)
    script = build / "build" / "client.js"
    assert script.is_file()
    return script


@asynccontextmanager
async def _node(
    client_js: Path, stack: Stack, *args: str, env: dict[str, str] | None = None
) -> AsyncIterator[asyncio.subprocess.Process]:
    """The client running one scenario against `stack`, killed if still running at exit."""
    assert NODE is not None
    process = await asyncio.create_subprocess_exec(
        NODE,
        str(client_js),
        stack.jobs_target,
        stack.events_target,
        "alice-token",
        *args,
        cwd=REPO_ROOT,
        env=env or dict(os.environ),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        yield process
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def _read_line(process: asyncio.subprocess.Process) -> dict[str, Any]:
    assert process.stdout is not None
    line = await process.stdout.readline()
    assert line, "the client ended early"
    parsed: dict[str, Any] = json.loads(line)
    return parsed


async def _finish(process: asyncio.subprocess.Process) -> tuple[list[dict[str, Any]], str]:
    """The rest of the client's output as JSON lines, once it exited 0; and its stderr."""
    stdout, stderr = await process.communicate()
    assert process.returncode == 0, stderr.decode()
    return [json.loads(line) for line in stdout.decode().splitlines()], stderr.decode()


async def _scenario(client_js: Path, stack: Stack, *args: str) -> list[dict[str, Any]]:
    async with _node(client_js, stack, *args) as process:
        async with asyncio.timeout(TIMEOUT):
            lines, _ = await _finish(process)
    return lines


def _key(event_id: str) -> tuple[int, int]:
    millis, sequence = event_id.split("-")
    return int(millis), int(sequence)


def _ids(lines: Sequence[dict[str, Any]]) -> list[str]:
    return [line["event_id"] for line in lines]


async def test_submit_watch_and_resume_after_an_event_id(
    make_stack: StackFactory, client_js: Path, redis_client: redis.asyncio.Redis
) -> None:
    pipeline = GatedPipeline(2)  # the job holds at step 2 until the watch is open
    stack = await make_stack(pipeline)
    async with _node(client_js, stack, "submit-watch") as process:
        async with asyncio.timeout(TIMEOUT):
            submitted = await _read_line(process)
            snapshot = await _read_line(process)
            pipeline.release(2)
            rest, _ = await _finish(process)

    assert submitted["type"] == "submitted"
    assert submitted["replayed"] is False
    assert uuid.UUID(submitted["request_id"]).version == 4  # a fresh one from the client
    assert submitted["state"] == "JOB_STATE_QUEUED"
    assert submitted["spec"] == {"prompt": "a red fox", "width": 64, "height": 64, "steps": 4}
    job_id = submitted["job_id"]
    assert rest[-1] == {"type": "end", "events": len(rest), "terminal": True}
    watched = [snapshot, *rest[:-1]]
    assert all(line["type"] == "event" and line["job_id"] == job_id for line in watched)

    kinds = [line["kind"] for line in watched]
    assert kinds[0] == "snapshot"
    assert snapshot["state"] in {"JOB_STATE_QUEUED", "JOB_STATE_RUNNING"}  # not over yet
    assert kinds.count("snapshot") == 1
    assert kinds[-1] == "succeeded"
    assert watched[-1]["state"] == "JOB_STATE_SUCCEEDED"
    assert watched[-1]["outputs"] == 1
    logged = watched[1:]
    assert all(line["event_id"] for line in logged)
    assert [_key(i) for i in _ids(logged)] == sorted({_key(i) for i in _ids(logged)})
    steps = [line["step"] for line in logged if line["kind"] == "progress"]
    assert steps == sorted(set(steps))
    assert steps[-1] == 4
    assert {line["total_steps"] for line in logged if line["kind"] == "progress"} == {4}

    # What the Events service logged for the job, straight from Redis: the watch saw all
    # of it after the snapshot's event id, each event once.
    entries = await events.EventLog(redis_client, stack.settings.key_prefix).read(job_id)
    log = [entry_id for entry_id, _ in entries]
    assert len(log) == 7  # queued, started, 4 x progress, succeeded
    covered = log.index(snapshot["event_id"]) + 1 if snapshot["event_id"] else 0
    assert _ids(logged) == log[covered:]

    # Resuming after an event returns exactly the events after it: no snapshot, no repeats.
    resumed = await _scenario(client_js, stack, "resume", job_id, log[0])
    assert resumed[-1] == {"type": "end", "events": 6, "terminal": True}
    assert _ids(resumed[:-1]) == log[1:]
    assert [line["kind"] for line in resumed[:-1]] == ["started", *["progress"] * 4, "succeeded"]
    assert [line["step"] for line in resumed[:-1] if line["kind"] == "progress"] == [1, 2, 3, 4]
    assert resumed[-2] == watched[-1]
    # From the snapshot's event id: exactly what the first watch got after the snapshot.
    resumed = await _scenario(client_js, stack, "resume", job_id, snapshot["event_id"] or log[0])
    assert resumed[:-1] == (logged if snapshot["event_id"] else logged[1:])


async def test_bad_request_decodes_the_google_rpc_details(
    make_stack: StackFactory, client_js: Path
) -> None:
    stack = await make_stack(generator=False)
    [error] = await _scenario(client_js, stack, "bad-request")
    assert error["type"] == "error"
    assert (error["code"], error["code_name"]) == (3, "INVALID_ARGUMENT")
    assert error["status"]["code"] == 3  # the google.rpc.Status agrees with the call's status
    assert error["status"]["message"] == error["message"]
    assert set(error["detail_types"]) == {
        "type.googleapis.com/google.rpc.BadRequest",
        "type.googleapis.com/google.rpc.ErrorInfo",
    }
    assert error["error_info"]["reason"] == "INVALID_ARGUMENT"
    assert error["error_info"]["domain"] == "darkroom"
    fields = [violation["field"] for violation in error["violations"]]
    assert sorted(fields) == ["spec.prompt", "spec.steps", "spec.width"]
    assert all(violation["description"] for violation in error["violations"])


async def test_the_client_needs_the_vendored_error_details_proto(
    make_stack: StackFactory, client_js: Path, tmp_path: Path
) -> None:
    """The decoding comes from the vendored protos: without error_details.proto it fails."""
    stack = await make_stack(generator=False)
    shutil.copytree(REPO_ROOT / "protos" / "darkroom", tmp_path / "protos" / "darkroom")
    shutil.copytree(REPO_ROOT / "third_party", tmp_path / "third_party")
    (tmp_path / "third_party" / "googleapis" / "google" / "rpc" / "error_details.proto").unlink()
    env = {**os.environ, "DARKROOM_REPO_ROOT": str(tmp_path)}
    async with _node(client_js, stack, "bad-request", env=env) as process:
        async with asyncio.timeout(TIMEOUT):
            stdout, stderr = await process.communicate()
    assert process.returncode == 1
    assert stdout == b""
    assert b"error_details.proto" in stderr
