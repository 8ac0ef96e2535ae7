"""`python -m services.events`: run the Events service until SIGTERM."""

from __future__ import annotations

import asyncio
import signal

import structlog
import uvloop

from darkroom import logs
from darkroom.config import Settings, load_settings
from services.events.app import start

log = structlog.get_logger("darkroom.events")


async def run(settings: Settings) -> None:
    app = await start(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    log.info("server_stopping", grace_s=settings.shutdown_grace.total_seconds())
    await app.close(settings)
    log.info("server_stopped")


def main() -> None:
    settings = load_settings("darkroom-events")
    logs.configure(settings.log_level, settings.log_json)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(run(settings))


if __name__ == "__main__":
    main()
