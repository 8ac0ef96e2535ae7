"""On GCS the gateway redirects to the signed URL the services give (an emulator stands in
for GCS; a locally made service-account key signs)."""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta
from pathlib import Path

from darkroom.services.jobs.app import start as start_jobs
from tests.services.gateway.conftest import FrontFactory, spec
from tests.services.generator.test_gcs import (  # noqa: F401 - fixtures, used by name
    BUCKET,
    _service_account_info,
    emulated,
    emulator,
)


async def test_outputs_redirect_to_the_signed_url(
    make_front: FrontFactory,
    emulated: str,  # noqa: F811
    tmp_path: Path,
) -> None:
    key = tmp_path / "key.json"
    key.write_text(json.dumps(_service_account_info()))
    storage = {"storage_url": f"gs://{BUCKET}/gateway", "gcs_project": "darkroom-test"}
    # The generator uploads anonymously (the emulator's way); the Jobs service, which
    # turns each output's URI into a URL, signs with a key made here (no network needed).
    front = await make_front(stack_settings=storage)
    stack = front.stack
    port = stack.jobs.port
    await stack.jobs.stop(timedelta(0))
    signing = stack.settings.model_copy(update={"gcs_credentials_file": str(key)})
    stack.jobs = await start_jobs(signing, f"127.0.0.1:{port}")
    async with front.http() as http:
        job = (await http.post("/v1/jobs", json=spec("cloud"))).json()
        async with asyncio.timeout(20):
            while (job := (await http.get(f"/v1/jobs/{job['id']}")).json())["state"] in {
                "JOB_STATE_QUEUED",
                "JOB_STATE_RUNNING",
            }:
                await asyncio.sleep(0.05)
        assert job["state"] == "JOB_STATE_SUCCEEDED", job
        answer = await http.get(f"/v1/jobs/{job['id']}/outputs/0")
        assert answer.status_code == 307, (answer.text, job["outputs"])
        assert "X-Goog-Signature=" in answer.headers["location"]
        assert answer.headers["cache-control"] == "no-store"
