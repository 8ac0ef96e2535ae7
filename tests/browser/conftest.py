"""A real browser against the real stack on loopback: Debian's chromium, driven by
Playwright's driver (no browser download), and the gateway as a process of its own so
that a test can kill it."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from playwright.async_api import Browser, async_playwright

from darkroom import devservers
from tests.clients.conftest import (  # noqa: F401 - fixtures, used by name
    REPO_ROOT,
    GatedPipeline,
    Stack,
    StackFactory,
    make_stack,
)

ARTIFACTS = REPO_ROOT / "test-artifacts" / "browser"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def chromium() -> str:
    """The chromium binary, or a skip (a failure where CI requires the browser)."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        reason = (
            "Chromium not found: the browser tests did not run "
            "(apt-get install -y chromium; CI installs it and requires these tests)"
        )
        if os.environ.get("DARKROOM_REQUIRE_BROWSER") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    return found


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    executable = chromium()
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(
            executable_path=executable, args=CHROMIUM_ARGS, headless=True
        )
        yield launched
        await launched.close()


@dataclass
class GatewayProcess:
    """`python -m darkroom.services.gateway` in front of a stack, on a fixed port."""

    stack: Stack
    port: int = field(default_factory=devservers.free_port)
    process: asyncio.subprocess.Process | None = None

    @property
    def log(self) -> Path:
        """The gateway's log (kept with the screenshots, for when a test fails)."""
        return artifact(f"gateway-{self.port}.log")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _env(self) -> dict[str, str]:
        s = self.stack.settings
        return {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(sys.path),
            "DARKROOM_GATEWAY_ADDRESS": f"127.0.0.1:{self.port}",
            "DARKROOM_GATEWAY_JOBS_TARGET": self.stack.jobs_target,
            "DARKROOM_GATEWAY_EVENTS_TARGET": self.stack.events_target,
            "DARKROOM_GATEWAY_SESSION_SECRET": "browser-test-secret",
            "DARKROOM_GATEWAY_KEEPALIVE": "0.5",
            "DARKROOM_STORAGE_URL": s.storage_url,
            "DARKROOM_AUTH_TOKENS": json.dumps(s.auth_tokens),
            "DARKROOM_MODELS": json.dumps(s.models),
            "DARKROOM_SHUTDOWN_GRACE": "1",
            "DARKROOM_LOG_JSON": "true",
            "PYTHONUNBUFFERED": "1",  # its log survives a SIGKILL
        }

    async def start(self) -> None:
        with self.log.open("ab") as log:  # the child keeps its own copy of the descriptor
            self.process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "darkroom.services.gateway",
                env=self._env(),
                stdout=asyncio.subprocess.DEVNULL,
                stderr=log,
            )
        async with httpx.AsyncClient(base_url=self.url, timeout=1) as http, asyncio.timeout(30):
            while True:
                try:
                    if (await http.get("/healthz")).status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                assert self.process.returncode is None, "the gateway exited while starting"
                await asyncio.sleep(0.05)

    async def kill(self) -> None:
        """SIGKILL: no graceful end for its streams, as when a machine dies."""
        if self.process is not None and self.process.returncode is None:
            self.process.send_signal(signal.SIGKILL)
            await self.process.wait()


@pytest.fixture
async def gateway_process(
    make_stack: StackFactory,  # noqa: F811
) -> AsyncIterator[tuple[GatewayProcess, GatedPipeline]]:
    # Held at step 1 until the page has its first event, then at step 3 while a test kills
    # something: steps 2 and 3 are then logged after the page's snapshot, so it must get
    # them as events (a snapshot's row may show an older step than the log it covers).
    pipeline = GatedPipeline(1, 3)
    stack = await make_stack(pipeline)
    gateway = GatewayProcess(stack)
    await gateway.start()
    yield gateway, pipeline
    await gateway.kill()


def artifact(name: str) -> Path:
    """Where a test saves a screenshot (test-artifacts/ is ignored by git)."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS / name
