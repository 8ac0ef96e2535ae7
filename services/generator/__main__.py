"""`python -m services.generator`: run one Generator (one per GPU) until SIGTERM."""

from __future__ import annotations

import asyncio
import signal

import structlog
import uvloop

from darkroom import logs
from darkroom.config import Settings, load_settings
from services.generator.worker import start

log = structlog.get_logger("darkroom.generator")


async def run(settings: Settings) -> None:
    generator = await start(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    assert generator.task is not None
    stopper = asyncio.create_task(stop.wait())
    await asyncio.wait({generator.task, stopper}, return_when=asyncio.FIRST_COMPLETED)
    log.info("generator_stopping", grace_s=settings.shutdown_grace.total_seconds())
    await generator.stop(settings.shutdown_grace)
    stopper.cancel()
    log.info("generator_stopped")


def main() -> None:
    settings = load_settings("darkroom-generator")
    logs.configure(settings.log_level, settings.log_json)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(run(settings))


if __name__ == "__main__":
    main()
