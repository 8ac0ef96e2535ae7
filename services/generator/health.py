"""The generator's HTTP health endpoint, for probes (it serves no gRPC).

- `GET /healthz` (liveness) answers 200 while the generator shows signs of life by its own
  heartbeat: idle, its queue loop has turned within `LOOP_STALL` (it turns at least every
  poll delay, and every few seconds even while Redis fails); busy, its pipeline has called
  back within the job timeout (a pipeline thread that stopped calling back is wedged, and
  only a restart frees the device). A stalled event loop answers nothing at all, which a
  probe counts as a failure too.
- `GET /readyz` (readiness) answers 200 while it is started, not stopping, and its last
  look at the queue succeeded.

Both answer a small JSON body saying why. Set `DARKROOM_GENERATOR_HEALTH_ADDRESS` (e.g.
`0.0.0.0:8080`) to serve it; it is off by default.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus

import structlog

log = structlog.get_logger("darkroom.generator")

LOOP_STALL = 60.0
READ_TIMEOUT = 2.0


@dataclass(frozen=True)
class Verdict:
    ok: bool
    reason: str


@dataclass
class Vitals:
    """What the generator reports about itself (read when a probe asks)."""

    looked_at: Callable[[], float]  # monotonic time of the queue loop's last turn
    queue_ok: Callable[[], bool]  # whether that turn succeeded
    attempt_alive_at: Callable[[], float | None]  # last sign of the running pipeline, if any
    stopping: Callable[[], bool]
    stall: float  # how long a pipeline may go without calling back

    def live(self) -> Verdict:
        now = time.monotonic()
        alive_at = self.attempt_alive_at()
        if alive_at is not None:
            if now - alive_at > self.stall:
                return Verdict(
                    False, f"the pipeline has not called back for {now - alive_at:.0f} s"
                )
            return Verdict(True, "running a job")
        if now - self.looked_at() > LOOP_STALL:
            return Verdict(
                False, f"the queue loop has not turned for {now - self.looked_at():.0f} s"
            )
        return Verdict(True, "waiting for work")

    def ready(self) -> Verdict:
        if self.stopping():
            return Verdict(False, "stopping")
        if not self.queue_ok():
            return Verdict(False, "the queue is unreachable")
        return Verdict(True, "taking jobs")


class HealthServer:
    """A tiny HTTP/1.0 server for the two probes: nothing else is served."""

    def __init__(self, vitals: Vitals) -> None:
        self._vitals = vitals
        self._server: asyncio.Server | None = None

    async def start(self, address: str) -> int:
        """Listen on `host:port` (port 0: any); the port bound."""
        host, _, port = address.rpartition(":")
        self._server = await asyncio.start_server(self._serve, host.strip("[]") or None, int(port))
        bound = int(self._server.sockets[0].getsockname()[1])
        log.info("health_listening", address=address, port=bound)
        return bound

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(READ_TIMEOUT):
                request = await reader.readline()
                while (await reader.readline()).strip():  # the headers: not needed
                    pass
            parts = request.decode("latin-1").split()
            body: dict[str, object]
            path = parts[1].split("?")[0] if len(parts) >= 2 else ""
            if parts[:1] not in (["GET"], ["HEAD"]):
                status, body = HTTPStatus.METHOD_NOT_ALLOWED, {"error": "GET only"}
            elif path in ("/healthz", "/readyz"):
                verdict = self._vitals.live() if path == "/healthz" else self._vitals.ready()
                status = HTTPStatus.OK if verdict.ok else HTTPStatus.SERVICE_UNAVAILABLE
                body = {"ok": verdict.ok, "reason": verdict.reason}
            else:
                status, body = HTTPStatus.NOT_FOUND, {"error": "try /healthz or /readyz"}
            payload = json.dumps(body).encode()
            head = (
                f"HTTP/1.0 {status.value} {status.phrase}\r\n"
                "Content-Type: application/json\r\n"
                f"Content-Length: {len(payload)}\r\n"
                "Cache-Control: no-store\r\n\r\n"
            )
            writer.write(head.encode() + (payload if parts[:1] != ["HEAD"] else b""))
            await writer.drain()
        except (TimeoutError, OSError, ValueError):
            pass  # a probe that went away, or not HTTP at all
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
