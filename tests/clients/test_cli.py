"""The `darkroom` CLI as a real process against running servers: output and exit codes."""

from __future__ import annotations

import io
import json
import uuid
from pathlib import Path

import pytest
from PIL import Image

from darkroom import devservers
from darkroom.services.generator import pipeline as pipelines
from darkroom.v1 import events_service_pb2
from darkroom_client import cli
from darkroom_client.progress import ProgressBar
from tests.clients.conftest import StackFactory


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
    code, _, err = await stack.cli("cancel", job_id)  # already finished
    assert code == 4
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
