"""The generator's HTTP health endpoint, served by a real generator, and its verdicts."""

from __future__ import annotations

import asyncio
import json
import time

from darkroom.services.generator.health import LOOP_STALL, Vitals
from tests.services.generator.conftest import StackFactory


async def get(port: int, path: str, method: str = "GET") -> tuple[int, dict[str, object]]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"{method} {path} HTTP/1.1\r\nHost: probe\r\n\r\n".encode())
    await writer.drain()
    answer = await reader.read()
    writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    status = int(head.split()[1])
    return status, json.loads(body) if body else {}


async def test_probes_answer_from_a_running_generator(make_stack: StackFactory) -> None:
    stack = await make_stack(generator_health_address="127.0.0.1:0")
    port = stack.generator.health_port
    assert port
    assert await get(port, "/healthz") == (200, {"ok": True, "reason": "waiting for work"})
    assert await get(port, "/readyz") == (200, {"ok": True, "reason": "taking jobs"})
    assert (await get(port, "/metrics"))[0] == 404
    assert (await get(port, "/healthz", method="POST"))[0] == 405
    assert (await get(port, "/readyz", method="HEAD")) == (200, {})
    job = await stack.wait((await stack.caller.submit(width=64, height=64, steps=2)).job.id)
    assert job.state == 3  # SUCCEEDED: probes never got in its way
    stack.generator.consumer.stop()  # what a SIGTERM does first
    assert await get(port, "/readyz") == (503, {"ok": False, "reason": "stopping"})


def _vitals(*, looked: float, alive: float | None, ok: bool = True) -> Vitals:
    now = time.monotonic()
    return Vitals(
        looked_at=lambda: now - looked,
        queue_ok=lambda: ok,
        attempt_alive_at=lambda: None if alive is None else now - alive,
        stopping=lambda: False,
        stall=30.0,
    )


def test_a_wedged_pipeline_or_a_stuck_loop_is_not_live() -> None:
    assert _vitals(looked=1, alive=None).live().ok
    assert _vitals(looked=LOOP_STALL + 5, alive=2).live().ok  # busy: the loop waits on it
    wedged = _vitals(looked=0, alive=31).live()
    assert not wedged.ok
    assert "not called back for 31 s" in wedged.reason
    assert not _vitals(looked=LOOP_STALL + 5, alive=None).live().ok
    assert not _vitals(looked=1, alive=None, ok=False).ready().ok
    assert _vitals(looked=1, alive=None, ok=False).live().ok  # Redis down: not a restart
