"""A real HTTP receiver on loopback (uvicorn): it answers each POST as its script says and
keeps what it was sent, for tests to verify with the `standardwebhooks` library."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import uvicorn
from standardwebhooks import Webhook
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response
from starlette.routing import Route


@dataclass
class Received:
    """One POST as it arrived."""

    headers: dict[str, str]
    body: bytes
    at: float  # time.monotonic()

    @property
    def id(self) -> str:
        return self.headers["webhook-id"]

    def verify(self, secret: str) -> dict[str, object]:
        """The payload, once `secret`'s signature checks (WebhookVerificationError if not)."""
        payload: dict[str, object] = Webhook(secret).verify(self.body, self.headers)
        return payload


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


@dataclass
class Receiver:
    """Answers by `script` (one word a POST, then `default`): ok (200), fail (500),
    redirect (302), hang (never answers), slow (200 after 0.2 s), big (200 with 64 KiB)."""

    script: list[str] = field(default_factory=list)
    default: str = "ok"
    received: list[Received] = field(default_factory=list)
    port: int = 0
    _arrived: asyncio.Event = field(default_factory=asyncio.Event)
    _server: _Server | None = None
    _task: asyncio.Task[None] | None = None

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    async def _answer(self, request: Request) -> Response:
        self.received.append(
            Received(dict(request.headers), await request.body(), time.monotonic())
        )
        self._arrived.set()
        how = self.script.pop(0) if self.script else self.default
        if how == "fail":
            return PlainTextResponse("broken", status_code=500)
        if how == "redirect":
            return RedirectResponse("https://elsewhere.example/hook", status_code=302)
        if how == "hang":
            await asyncio.Event().wait()
        if how == "slow":
            await asyncio.sleep(0.2)
        if how == "big":
            return PlainTextResponse("x" * 65_536)
        return PlainTextResponse("thanks")

    async def start(self) -> Receiver:
        app = Starlette(routes=[Route("/{path:path}", self._answer, methods=["POST"])])
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        sock.listen(128)
        sock.setblocking(False)
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(
            app,
            lifespan="off",
            log_config=None,
            access_log=False,
            ws="none",
            timeout_graceful_shutdown=1,
        )
        self._server = _Server(config)
        self._task = asyncio.create_task(self._server.serve(sockets=[sock]))
        while not self._server.started:
            await asyncio.sleep(0.01)
        return self

    async def stop(self) -> None:
        if self._server is not None and self._task is not None:
            self._server.should_exit = True
            await asyncio.wait_for(asyncio.gather(self._task, return_exceptions=True), 10)

    async def wait_for(self, count: int, timeout: float = 20) -> list[Received]:
        """Until `count` POSTs have arrived (AssertionError after `timeout` s)."""
        deadline = time.monotonic() + timeout
        while len(self.received) < count:
            left = deadline - time.monotonic()
            assert left > 0, f"{len(self.received)} of {count} POSTs arrived in {timeout} s"
            self._arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), min(left, 0.5))
        return self.received
