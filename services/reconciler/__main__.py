"""`python -m darkroom.services.reconciler`: reconcile every DARKROOM_RECONCILE_INTERVAL.

Runs until SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from datetime import timedelta

import structlog

from darkroom import process
from darkroom.config import Settings
from darkroom.services.reconciler.reconciler import Reconciler
from darkroom.wiring import Resources

log = structlog.get_logger("darkroom.reconciler")


@dataclass
class ReconcilerApp:
    """A reconciler running one pass every interval, until stopped."""

    reconciler: Reconciler
    resources: Resources
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None

    async def _loop(self) -> None:
        interval = self.resources.settings.reconcile_interval.total_seconds()
        log.info("reconciler_started", interval_s=interval)
        while not self.stopping.is_set():
            try:
                report = await self.reconciler.run_once()
                if any(report.as_dict().values()):
                    log.info("reconciled", **report.as_dict())
            except Exception as exc:  # noqa: BLE001 - a pass fails when Postgres or Redis is down; retry
                process.raise_if_cancelled()
                log.warning("reconcile_failed", error=repr(exc))
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(interval):
                    await self.stopping.wait()
            process.raise_if_cancelled()

    async def wait(self) -> None:
        """Until the loop ends (only on stop)."""
        if self.task is not None:
            await asyncio.shield(self.task)

    async def stop(self, grace: timedelta) -> None:
        """Let the pass under way finish (within `grace`), then release the connections."""
        self.stopping.set()
        if self.task is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self.task), grace.total_seconds())
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)
        await self.resources.close()


async def start(settings: Settings) -> ReconcilerApp:
    """Connect (lazily) and start reconciling."""
    # It never blocks on Redis: a Redis that stops answering must not stall a pass.
    resources = Resources.open(
        settings, pool_size=2, redis_timeout=settings.enqueue_timeout.total_seconds()
    )
    reconciler = Reconciler(settings, lifecycle=resources.lifecycle, event_log=resources.event_log)
    app = ReconcilerApp(reconciler, resources)
    app.task = asyncio.create_task(app._loop())
    return app


def main() -> None:
    process.main("darkroom-reconciler", start)


if __name__ == "__main__":
    main()
