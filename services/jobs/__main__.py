"""`python -m darkroom.services.jobs`: run the Jobs service until SIGTERM."""

from __future__ import annotations

from darkroom import process
from darkroom.config import Settings
from darkroom.services.jobs.app import start


async def run(settings: Settings) -> None:
    await process.serve(await start(settings), settings)


def main() -> None:
    process.main("darkroom-jobs", run)


if __name__ == "__main__":
    main()
