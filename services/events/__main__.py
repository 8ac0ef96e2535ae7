"""`python -m services.events`: run the Events service until SIGTERM."""

from __future__ import annotations

import structlog

from darkroom import process
from darkroom.config import Settings
from services.events.app import start

log = structlog.get_logger("darkroom.events")


async def run(settings: Settings) -> None:
    app = await start(settings)
    await process.stop_signal().wait()
    log.info("server_stopping", grace_s=settings.shutdown_grace.total_seconds())
    await app.close(settings)
    log.info("server_stopped")


def main() -> None:
    process.main("darkroom-events", run)


if __name__ == "__main__":
    main()
