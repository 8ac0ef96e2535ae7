"""`make up` starts the gateway too and prints the page's address; `make down` stops it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx

from darkroom import devservers
from darkroom.config import DEV_TOKEN, Settings
from tests.conftest import drop_database
from tests.helpers import RUN_ID


def test_up_prints_the_page_and_serves_it(
    tmp_path: Path, postgres_admin_url: str, settings: Settings, tiny_model_path: Path
) -> None:
    gateway_port = devservers.free_port()
    database = f"darkroom_stack_page_{RUN_ID}"
    env = {
        **os.environ,
        "DARKROOM_STACK_HOME": str(tmp_path),
        "DARKROOM_STACK_POSTGRES_URL": postgres_admin_url,
        "DARKROOM_STACK_REDIS_URL": settings.redis_url,
        "DARKROOM_STACK_DATABASE": database,
        "DARKROOM_STACK_JOBS_PORT": str(devservers.free_port()),
        "DARKROOM_STACK_EVENTS_PORT": str(devservers.free_port()),
        "DARKROOM_STACK_GATEWAY_PORT": str(gateway_port),
        "DARKROOM_KEY_PREFIX": f"{settings.key_prefix}-stack-page",
        "DARKROOM_GENERATOR_MODEL_PATH": str(tiny_model_path),
        "DARKROOM_GENERATOR_DEVICE": "cpu",
    }
    command = [sys.executable, "-m", "darkroom.services.stack"]
    page = f"http://127.0.0.1:{gateway_port}/"
    try:
        up = subprocess.run(
            [*command, "up"], env=env, check=True, timeout=120, capture_output=True, text=True
        )
        assert f"open {page} and sign in with the token {DEV_TOKEN}" in up.stderr
        state = json.loads((tmp_path / "stack.json").read_text())
        assert "gateway" in state["pids"]
        with httpx.Client(base_url=page, timeout=10) as browser:
            assert "<title>Darkroom</title>" in browser.get("/").text
            signed = browser.post("/v1/session", json={"token": DEV_TOKEN})
            assert signed.status_code == 200, signed.text
            assert browser.get("/v1/jobs").status_code == 200
    finally:
        subprocess.run([*command, "down"], env=env, check=True, timeout=120)
        drop_database(postgres_admin_url, database)
    assert not (tmp_path / "stack.json").exists()
    with httpx.Client(timeout=2) as http:
        try:
            http.get(page)
        except httpx.TransportError:
            pass
        else:
            raise AssertionError("the gateway still answers after `down`")
