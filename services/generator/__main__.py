"""`python -m darkroom.services.generator`: run one Generator (one per GPU) until SIGTERM."""

from __future__ import annotations

import asyncio

import structlog

from darkroom import process
from darkroom.config import Settings
from darkroom.services.generator.faults import Faults
from darkroom.services.generator.pipeline import Pipeline
from darkroom.services.generator.worker import start

log = structlog.get_logger("darkroom.generator")


async def run(
    settings: Settings, *, pipeline: Pipeline | None = None, faults: Faults | None = None
) -> None:
    """Load the model (unless given a pipeline: tests do), serve until SIGTERM, drain."""
    generator = await start(settings, pipeline, faults=faults)
    assert generator.task is not None
    stopper = asyncio.create_task(process.stop_signal().wait())
    await asyncio.wait({generator.task, stopper}, return_when=asyncio.FIRST_COMPLETED)
    log.info("generator_stopping", grace_s=settings.shutdown_grace.total_seconds())
    await generator.stop(settings.shutdown_grace)
    stopper.cancel()
    log.info("generator_stopped")


def main() -> None:
    process.main("darkroom-generator", run)


if __name__ == "__main__":
    main()
