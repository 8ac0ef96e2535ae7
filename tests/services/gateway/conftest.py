"""A gateway in front of a whole stack per test: real Jobs, Events and Generator servers
on free ports (tests/clients' stack), and the real gateway under uvicorn on another."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import httpx
import pytest

from darkroom.config import Settings
from darkroom.services.gateway.app import GatewayApp
from darkroom.services.gateway.app import start as start_gateway
from tests.clients.conftest import (  # noqa: F401 - fixtures, used by name
    GatedPipeline,
    Stack,
    StackFactory,
    make_stack,
)

SESSION_SECRET = "gateway-test-secret"
KEEPALIVE = timedelta(milliseconds=200)


def gateway_settings(stack: Stack, **changes: Any) -> Settings:
    """The stack's settings, for a gateway that calls its Jobs and Events servers."""
    values: dict[str, Any] = {
        "gateway_jobs_target": stack.jobs_target,
        "gateway_events_target": stack.events_target,
        "gateway_session_secret": SESSION_SECRET,
        "gateway_keepalive": KEEPALIVE,
        "shutdown_grace": timedelta(seconds=1),
    }
    values.update(changes)
    return stack.settings.model_copy(update=values)


@dataclass
class Front:
    """A stack with a gateway before it."""

    stack: Stack
    gateway: GatewayApp
    settings: Settings

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.gateway.port}"

    def http(self, token: str | None = "alice-token", **options: Any) -> httpx.AsyncClient:
        """An HTTP client of the gateway (a bearer caller unless `token` is None)."""
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        options.setdefault("timeout", 15)
        options.setdefault("base_url", self.url)
        return httpx.AsyncClient(headers=headers, **options)

    async def restart(self) -> None:
        """Stop the gateway (open streams end), start another on the same port."""
        port = self.gateway.port
        await self.gateway.stop(timedelta(seconds=1))
        self.gateway = await start_gateway(self.settings, f"127.0.0.1:{port}")


FrontFactory = Callable[..., Awaitable[Front]]


@pytest.fixture
async def make_front(make_stack: StackFactory) -> AsyncIterator[FrontFactory]:  # noqa: F811
    """`make_front(pipeline, stack_settings={...}, **gateway_settings)`: a stack and its
    gateway (stopped afterwards); the gateway's settings are the stack's, changed."""
    fronts: list[Front] = []

    async def make(
        pipeline: Any = None,
        *,
        generator: bool = True,
        stack_settings: dict[str, Any] | None = None,
        **changes: Any,
    ) -> Front:
        stack = await make_stack(pipeline, generator=generator, **(stack_settings or {}))
        settings = gateway_settings(stack, **changes)
        front = Front(stack, await start_gateway(settings, "127.0.0.1:0"), settings)
        fronts.append(front)
        return front

    yield make
    for front in fronts:
        await front.gateway.stop(timedelta(seconds=1))


def spec(prompt: str = "a lighthouse", **fields: Any) -> dict[str, Any]:
    """A create-job body for a small, fast job."""
    return {"spec": {"prompt": prompt, "width": 64, "height": 64, "steps": 4, **fields}}
