"""The README's grpcurl examples, run as written against real servers."""

from __future__ import annotations

import asyncio
import json
import re
import shlex
import sys
from pathlib import Path

from darkroom.services.events.app import EventsApp
from darkroom.services.jobs.app import JobsApp

README = Path(__file__).resolve().parents[1] / "README.md"
GRPCURL = str(Path(sys.executable).with_name("grpcurl"))


def examples() -> list[list[str]]:
    text = README.read_text()
    block = text.split("<!-- grpcurl-examples -->")[1].split("<!-- /grpcurl-examples -->")[0]
    body = block.split("```bash")[1].split("```")[0].replace("\\\n", " ")
    return [shlex.split(line) for line in body.splitlines() if line.strip()]


async def _run(argv: list[str]) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_readme_grpcurl_examples_work(jobs_app: JobsApp, events_app: EventsApp) -> None:
    commands = examples()
    assert [c[0] for c in commands] == ["grpcurl"] * 5
    ports = {
        "localhost:50051": f"127.0.0.1:{jobs_app.port}",
        "localhost:50052": f"127.0.0.1:{events_app.port}",
    }
    job_id = ""
    outputs = []
    # Run list, submit, get, then cancel before watch so the watch ends with the job.
    order = [0, 1, 2, 4, 3]
    for index in order:
        argv = [GRPCURL] + [
            ports.get(arg, arg).replace("JOB_ID", job_id) for arg in commands[index][1:]
        ]
        code, out, err = await _run(argv)
        assert code == 0, (commands[index], err)
        outputs.append(out)
        if index == 1:
            job_id = json.loads(out)["job"]["id"]
    assert "darkroom.v1.JobsService" in outputs[0]
    assert "darkroom.v1.EventsService" not in outputs[0]
    assert json.loads(outputs[2])["job"]["id"] == job_id
    assert json.loads(outputs[3])["job"]["state"] == "JOB_STATE_CANCELLED"
    watched = [json.loads(chunk) for chunk in re.split(r"\n(?=\{)", outputs[4].strip())]
    assert watched[-1]["event"]["snapshot"]["job"]["state"] == "JOB_STATE_CANCELLED"
