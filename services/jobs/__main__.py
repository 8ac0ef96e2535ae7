"""`python -m services.jobs`: run the Jobs service until SIGTERM."""

from __future__ import annotations

import asyncio

import uvloop

from darkroom import logs
from darkroom.config import Settings, load_settings
from darkroom.server import serve
from services.jobs.app import start


async def run(settings: Settings) -> None:
    app = await start(settings)
    try:
        await serve(app.running, settings.shutdown_grace)
    finally:
        await app.close(settings)


def main() -> None:
    settings = load_settings("darkroom-jobs")
    logs.configure(settings.log_level, settings.log_json)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(run(settings))


if __name__ == "__main__":
    main()
