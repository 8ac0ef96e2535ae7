"""What every Darkroom process does around its work: settings, logs, uvloop, signals."""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import Callable, Coroutine
from typing import Any, Protocol

import structlog
import uvloop

from darkroom import logs
from darkroom.config import Settings, load_settings
from darkroom.server import ListenError

log = structlog.get_logger("darkroom.server")


class App(Protocol):
    """A started service that can shut itself down gracefully."""

    async def close(self, settings: Settings) -> None: ...


async def serve(app: App, settings: Settings) -> None:
    """Serve until SIGTERM or SIGINT, then close `app` gracefully."""
    await stop_signal().wait()
    log.info("server_stopping", grace_s=settings.shutdown_grace.total_seconds())
    await app.close(settings)
    log.info("server_stopped")


def stop_signal() -> asyncio.Event:
    """An event set on SIGTERM or SIGINT (call from the running loop)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    return stop


def main(program: str, run: Callable[[Settings], Coroutine[Any, Any, None]]) -> None:
    """Load settings (a bad one ends the process naming it), configure logs, and run."""
    settings = load_settings(program)
    logs.configure(settings.log_level, settings.log_json)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        try:
            runner.run(run(settings))
        except ListenError as exc:
            print(f"{program}: {exc}", file=sys.stderr)
            raise SystemExit(1) from None
