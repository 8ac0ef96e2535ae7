"""The gateway as a real process, and its refusals: exposure rules as the gRPC servers'."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from datetime import timedelta

import httpx
import pytest

from darkroom import devservers
from darkroom.config import DEV_TOKEN, Settings
from darkroom.server import ExposureError, ListenError
from darkroom.services.gateway.app import start as start_gateway

OWN_TOKENS = {"s3cret-token-of-ours": "ops"}


async def _run(env: dict[str, str]) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "darkroom.services.gateway",
        env={**os.environ, "DARKROOM_LOG_JSON": "true", **env},
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )


async def test_serves_until_sigterm_then_exits_cleanly() -> None:
    port = devservers.free_port()
    process = await _run({"DARKROOM_GATEWAY_ADDRESS": f"127.0.0.1:{port}"})
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
            async with asyncio.timeout(30):
                while True:
                    try:
                        page = await http.get("/")
                        break
                    except httpx.TransportError:
                        await asyncio.sleep(0.05)
            assert page.status_code == 200
            assert "default-src 'self'" in page.headers["content-security-policy"]
            script = await http.get("/static/app.js")
            assert "EventSource" in script.text
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), 15) == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def test_off_loopback_in_plaintext_it_refuses_to_start_naming_the_settings() -> None:
    process = await _run(
        {
            "DARKROOM_GATEWAY_ADDRESS": f"0.0.0.0:{devservers.free_port()}",
            "DARKROOM_AUTH_TOKENS": json.dumps(OWN_TOKENS),
        }
    )
    _, stderr = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 1
    assert "DARKROOM_ALLOW_INSECURE" in stderr.decode()
    assert "Traceback" not in stderr.decode()


async def test_exposure_rules() -> None:
    anywhere = f"0.0.0.0:{devservers.free_port()}"
    with pytest.raises(ExposureError, match="development token"):
        await start_gateway(Settings(allow_insecure=True), anywhere)
    with pytest.raises(ExposureError, match="DARKROOM_GATEWAY_SESSION_SECRET"):
        await start_gateway(Settings(auth_tokens=OWN_TOKENS, allow_insecure=True), anywhere)
    opened = await start_gateway(
        Settings(
            auth_tokens=OWN_TOKENS,
            allow_insecure=True,
            gateway_session_secret="shared-by-replicas",
        ),
        anywhere,
    )
    await opened.stop(timedelta(seconds=1))
    # The development token is fine on loopback.
    assert DEV_TOKEN in Settings().auth_tokens


async def test_a_taken_port_is_an_error() -> None:
    first = await start_gateway(Settings(), "127.0.0.1:0")
    try:
        with pytest.raises(ListenError, match="in use"):
            await start_gateway(Settings(), f"127.0.0.1:{first.port}")
    finally:
        await first.stop(timedelta(seconds=1))
