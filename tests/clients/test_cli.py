"""The `darkroom` CLI as a real process against running servers: output and exit codes."""

from __future__ import annotations

import asyncio
import io
import json
import os
import pty
import signal
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from darkroom import devservers
from darkroom.services.generator import pipeline as pipelines
from darkroom.v1 import events_service_pb2, job_pb2
from darkroom_client import cli, cli_generate
from darkroom_client.aio import AsyncDarkroomClient
from darkroom_client.progress import ProgressBar
from tests.clients.conftest import REPO_ROOT, Stack, StackFactory


async def test_generate_saves_pngs_prints_their_paths_and_shows_progress(
    make_stack: StackFactory, tmp_path: Path
) -> None:
    stack = await make_stack()
    code, out, err = await stack.cli(
        "generate",
        "a lighthouse at dusk",
        "--width=64",
        "--height=96",
        "--steps=3",
        "--seed=5",
        "--num-images=2",
        "-o",
        str(tmp_path / "out.png"),
    )
    assert code == 0, err
    paths = [tmp_path / "out-0.png", tmp_path / "out-1.png"]
    assert out.splitlines() == [str(path) for path in paths]
    for path in paths:
        with Image.open(path) as image:
            assert (image.format, image.size) == ("PNG", (64, 96))
    assert "step 3/3" in err
    assert "saved 2 image(s)" in err
    # Not a terminal: plain lines, the job id first, no carriage-return bar.
    assert "\r" not in err
    first = err.splitlines()[0]
    assert first.startswith("darkroom: job ")
    assert first.endswith("accepted (Ctrl-C cancels it)")

    code, out, err = await stack.cli(
        "--json", "generate", "one", "--width=64", "--height=64", "--steps=1", "-q", cwd=tmp_path
    )
    assert code == 0, err
    printed = json.loads(out)
    assert printed["job"]["state"] == "JOB_STATE_SUCCEEDED"
    assert printed["paths"] == [f"{printed['job']['id']}.png"]
    assert (tmp_path / printed["paths"][0]).is_file()
    assert err == ""


async def test_json_get_list_and_not_found(make_stack: StackFactory) -> None:
    stack = await make_stack(generator=False)
    code, out, err = await stack.cli("submit", "json me", "--width=64", "--height=64", "--json")
    assert code == 0, err
    job_id = json.loads(out)["id"]

    code, out, err = await stack.cli("get", job_id, "--json")
    assert code == 0, err
    job = json.loads(out)
    assert (job["id"], job["state"], job["spec"]["width"]) == (job_id, "JOB_STATE_QUEUED", 64)

    code, out, err = await stack.cli("--json", "list", "--state", "queued", "--page-size", "1")
    assert code == 0, err
    assert [listed["id"] for listed in json.loads(out)["jobs"]] == [job_id]

    code, out, err = await stack.cli("get", str(uuid.uuid4()))
    assert code == 5
    assert "NOT_FOUND" in err
    code, _, err = await stack.cli("get", job_id, token="bob-token")  # another owner's job
    assert code == 5, err


async def test_cancelled_job_and_usage_errors(make_stack: StackFactory) -> None:
    stack = await make_stack(generator=False)
    code, out, err = await stack.cli("submit", "cancel me", "--width=64", "--height=64")
    assert code == 0, err
    job_id = out.strip()

    code, out, err = await stack.cli("cancel", job_id)
    assert code == 0, err
    assert "cancelled" in out
    code, out, err = await stack.cli("watch", job_id)
    assert code == 3, err
    assert out.splitlines()[-1].split("\t")[1:3] == ["snapshot", "cancelled"]
    code, out, err = await stack.cli("watch", job_id, "--json")
    assert code == 3, err
    assert json.loads(out.splitlines()[-1])["snapshot"]["job"]["state"] == "JOB_STATE_CANCELLED"
    code, _, err = await stack.cli("cancel", job_id)  # already finished: not a server failure
    assert code == 6
    assert "FAILED_PRECONDITION" in err

    code, _, err = await stack.cli("list", "--state", "bogus")  # argparse
    assert code == 2
    assert "invalid choice" in err
    code, _, err = await stack.cli("generate", "bad", "--width=7")  # the server says invalid
    assert code == 2
    assert "spec.width" in err


async def test_failed_job_exits_1(make_stack: StackFactory, tmp_path: Path) -> None:
    stack = await make_stack(
        pipelines.FakePipeline(step_seconds=0.001, fail="raise"), max_attempts=1
    )
    code, out, err = await stack.cli(
        "generate",
        "poison",
        "--width=64",
        "--height=64",
        "--steps=1",
        "-o",
        str(tmp_path / "x.png"),
    )
    assert code == 1
    assert out == ""
    assert "failed" in err
    assert not (tmp_path / "x.png").exists()


async def test_unreachable_server_exits_4(make_stack: StackFactory) -> None:
    stack = await make_stack(generator=False)
    dead = f"127.0.0.1:{devservers.free_port()}"
    code, _, err = await stack.cli("--jobs", dead, "--timeout", "1", "get", str(uuid.uuid4()))
    assert code == 4
    assert "UNAVAILABLE" in err


def test_help_documents_the_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.main(["--help"])
    assert exited.value.code == 0
    shown = capsys.readouterr().out
    for line in ("0  success", "1  the job failed", "3  the job was cancelled", "5  no such job"):
        assert line in shown
    assert "DARKROOM_TOKEN" in shown


def test_progress_bar_rewrites_one_line() -> None:
    stream = io.StringIO()
    bar = ProgressBar(stream)
    event = events_service_pb2.JobEvent(event_id="1-0")
    event.progress.progress.step, event.progress.progress.total_steps = 2, 4
    bar(event)
    bar.finish("saved 1 image(s)")
    assert stream.getvalue().startswith("\r[")
    assert "step 2/4" in stream.getvalue()
    last = stream.getvalue().split("\r")[-1]
    assert last.rstrip() == "saved 1 image(s)"
    assert len(last) == len("\r[" + "#" * 12 + "-" * 12 + "] step 2/4")
    assert last.endswith("\n")


async def _start_cli(stack: Stack, *args: str, **streams: Any) -> asyncio.subprocess.Process:
    env = {**stack.env("alice-token"), "PYTHONPATH": str(REPO_ROOT)}
    streams.setdefault("stdout", asyncio.subprocess.PIPE)
    streams.setdefault("stderr", asyncio.subprocess.PIPE)
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "darkroom_client.cli", *args, env=env, **streams
    )


async def _line_with(stream: asyncio.StreamReader, text: str) -> str:
    async with asyncio.timeout(30):
        while True:
            line = (await stream.readline()).decode()
            assert line, f"the CLI ended before printing {text!r}"
            if text in line:
                return line


async def _interrupt_generate(stack: Stack, *flags: str) -> tuple[str, int, str]:
    """Start `darkroom generate`, Ctrl-C it once its job is accepted: job id, exit, stderr."""
    process = await _start_cli(
        stack, "generate", "wait for me", "--width=64", "--height=64", *flags
    )
    assert process.stderr is not None
    accepted = await _line_with(process.stderr, "accepted")
    job_id = accepted.split()[2]
    process.send_signal(signal.SIGINT)
    async with asyncio.timeout(30):
        rest = (await process.stderr.read()).decode()
        code = await process.wait()
    return job_id, code, rest


async def test_ctrl_c_cancels_the_job_and_says_so(make_stack: StackFactory) -> None:
    stack = await make_stack(generator=False)  # the job stays QUEUED until cancelled
    job_id, code, err = await _interrupt_generate(stack)
    assert code == 130, err
    assert f"cancelled job {job_id}" in err
    assert "Traceback" not in err
    job = await stack.client().get(job_id)
    assert job.state == job_pb2.JOB_STATE_CANCELLED


async def test_ctrl_c_with_detach_leaves_the_job_running(make_stack: StackFactory) -> None:
    stack = await make_stack(generator=False)
    job_id, code, err = await _interrupt_generate(stack, "--detach")
    assert code == 130, err
    assert f"darkroom watch {job_id}" in err
    assert (await stack.client().get(job_id)).state == job_pb2.JOB_STATE_QUEUED


async def test_a_second_ctrl_c_while_cancelling_leaves_the_job_running(
    capsys: pytest.CaptureFixture[str],
) -> None:
    class HangingCancel(AsyncDarkroomClient):
        async def cancel(self, job_id: str, *, timeout: float | None = None) -> job_pb2.Job:
            await asyncio.Event().wait()
            raise AssertionError("unreachable")

    interrupted = asyncio.Event()
    args = cli.build_parser().parse_args(["generate", "p"])
    job = job_pb2.Job(id="job-1")
    asyncio.get_running_loop().call_later(0.05, interrupted.set)  # the second Ctrl-C
    code = await cli_generate._interrupted(HangingCancel("a:1", "b:2"), args, [job], interrupted)
    assert code == 130
    err = capsys.readouterr().err
    assert "cancelling job job-1" in err
    assert "left job job-1 running; follow it with: darkroom watch job-1" in err


async def test_a_closed_pipe_ends_quietly(make_stack: StackFactory) -> None:
    stack = await make_stack(generator=False)
    await stack.client().submit("one", width=64, height=64)
    read, write = os.pipe()
    os.close(read)  # the reader is gone before the first line, as after `| head -1`
    try:
        process = await _start_cli(stack, "list", stdout=write)
    finally:
        os.close(write)
    assert process.stderr is not None
    async with asyncio.timeout(30):
        err = (await process.stderr.read()).decode()
        code = await process.wait()
    assert code == 141
    assert err == ""


async def test_the_progress_bar_is_for_terminals_only(
    make_stack: StackFactory, tmp_path: Path
) -> None:
    stack = await make_stack()
    leader, follower = pty.openpty()
    try:
        process = await _start_cli(
            stack,
            "generate",
            "tty",
            "--width=64",
            "--height=64",
            "--steps=3",
            "-o",
            str(tmp_path / "t.png"),
            stderr=follower,
        )
        os.close(follower)
        async with asyncio.timeout(30):
            await process.wait()
        shown = b""
        while chunk := await asyncio.to_thread(_read_or_empty, leader):
            shown += chunk
    finally:
        os.close(leader)
    assert process.returncode == 0, shown
    assert b"\r[" in shown
    assert b"step 3/3" in shown


def _read_or_empty(fd: int) -> bytes:
    try:
        return os.read(fd, 65536)
    except OSError:  # EIO once the terminal's other side is closed
        return b""


async def test_json_errors_are_json_on_stderr(make_stack: StackFactory) -> None:
    stack = await make_stack(generator=False)
    code, out, err = await stack.cli("--json", "get", str(uuid.uuid4()))
    assert (code, out) == (5, "")
    error = json.loads(err)["error"]
    assert (error["code"], error["reason"], error["exit_code"]) == ("NOT_FOUND", "JOB_NOT_FOUND", 5)
    code, _, err = await stack.cli("--json", "submit", "", "--width=7")
    assert code == 2
    violations = json.loads(err)["error"]["violations"]
    assert {v["field"] for v in violations} == {"spec.prompt", "spec.width"}
