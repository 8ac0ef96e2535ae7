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
BUF = str(README.parent / "node_modules" / ".bin" / "buf")


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
    assert [c[0] for c in commands] == [".venv/bin/grpcurl"] * 5 + ["node_modules/.bin/buf"]
    addresses = {
        "localhost:50051": f"127.0.0.1:{jobs_app.port}",
        "localhost:50052": f"127.0.0.1:{events_app.port}",
    }
    tools = {".venv/bin/grpcurl": GRPCURL, "node_modules/.bin/buf": BUF}
    job_id = ""
    outputs = []
    # As written: list, submit, get, cancel (the job has not ended), watch, buf curl get.
    for index, command in enumerate(commands):
        argv = [tools[command[0]]]
        for arg in command[1:]:
            shown = arg.replace("JOB_ID", job_id)
            for address, real in addresses.items():
                shown = shown.replace(address, real)
            argv.append(shown)
        code, out, err = await _run(argv)
        assert code == 0, (command, err)
        outputs.append(out)
        if index == 1:
            job_id = json.loads(out)["job"]["id"]
    assert "darkroom.v1.JobsService" in outputs[0]
    assert "darkroom.v1.EventsService" not in outputs[0]
    assert json.loads(outputs[2])["job"]["id"] == job_id
    # grpcurl prints the proto names, as the README says (and its lines use).
    assert "request_id" in json.loads(outputs[1])["job"]
    assert json.loads(outputs[3])["job"]["state"] == "JOB_STATE_CANCELLED"
    watched = [json.loads(chunk) for chunk in re.split(r"\n(?=\{)", outputs[4].strip())]
    assert watched[-1]["event"]["snapshot"]["job"]["state"] == "JOB_STATE_CANCELLED"
    fetched = json.loads(outputs[5])["job"]
    assert (fetched["id"], fetched["state"], fetched["spec"]["numImages"]) == (
        job_id,
        "JOB_STATE_CANCELLED",
        4,
    )
