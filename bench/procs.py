"""Service processes started for a measurement: spawn, wait until ready, stop."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Child:
    """A process we started, and the file its output goes to."""

    name: str
    process: asyncio.subprocess.Process
    log_path: Path
    log_file: IO[bytes]

    @property
    def pid(self) -> int:
        return self.process.pid

    def tail(self, chars: int = 2000) -> str:
        self.log_file.flush()
        return self.log_path.read_text(errors="replace")[-chars:]


async def spawn(
    name: str, args: list[str], env: dict[str, str], log_dir: Path, *, stdout_pipe: bool = False
) -> Child:
    """Start `python ARGS` in the repository root, output to `log_dir/name.log` (stdout to
    a pipe instead with `stdout_pipe`)."""
    log_path = log_dir / f"{name}.log"
    log_file = log_path.open("ab")
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        *args,
        env=env,
        cwd=ROOT,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE if stdout_pipe else log_file,
        stderr=log_file,
    )
    return Child(name, process, log_path, log_file)


async def wait_until(
    check: Callable[[], Awaitable[bool]], child: Child | None, limit_s: float, what: str
) -> None:
    """Poll `check` until it holds; fail early if `child` died."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        if child is not None and child.process.returncode is not None:
            raise RuntimeError(f"{child.name} exited ({child.process.returncode}):\n{child.tail()}")
        if await check():
            return
        await asyncio.sleep(0.05)
    raise TimeoutError(f"{what} not ready after {limit_s:g} s")


async def wait_healthy(child: Child, port: int, limit_s: float = 60) -> None:
    """Wait until the gRPC server of `child` on `port` answers its health check."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)

        async def serving() -> bool:
            try:
                answer = await stub.Check(health_pb2.HealthCheckRequest(), timeout=1)
            except grpc.aio.AioRpcError:
                return False
            return bool(answer.status == health_pb2.HealthCheckResponse.SERVING)

        await wait_until(serving, child, limit_s, f"{child.name} on port {port}")


async def stop(child: Child, grace: float = 15) -> int | None:
    """SIGTERM, then SIGKILL after `grace` seconds; returns the exit status."""
    process = child.process
    if process.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), grace)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()
    child.log_file.close()
    return process.returncode


def rss_bytes(pid: int) -> int:
    """Resident memory of a process, from /proc/<pid>/status (VmRSS)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")
