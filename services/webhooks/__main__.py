"""`python -m darkroom.services.webhooks`: deliver webhooks until SIGTERM (any number of
replicas: each takes disjoint due deliveries)."""

from __future__ import annotations

import asyncio
import os
import socket
from dataclasses import dataclass, field
from datetime import timedelta

import structlog
from sqlalchemy.ext.asyncio import AsyncEngine

from darkroom import db, process
from darkroom.config import Settings
from darkroom.services.webhooks.sender import Sender
from darkroom.services.webhooks.wakeups import Wakeups
from darkroom.services.webhooks.worker import DeliveryWorker, stop_task
from darkroom.webhooks.addresses import AddressPolicy
from darkroom.webhooks.deliveries import Deliveries
from darkroom.webhooks.endpoints import Endpoints
from darkroom.wiring import storage_for

log = structlog.get_logger("darkroom.webhooks")


@dataclass
class WebhooksApp:
    """A delivery worker, its connections, and the task it runs in."""

    worker: DeliveryWorker
    engine: AsyncEngine
    sender: Sender
    wakeups: Wakeups
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None

    async def wait(self) -> None:
        """Until the loop ends (only on stop)."""
        if self.task is not None:
            await asyncio.shield(self.task)

    async def stop(self, grace: timedelta) -> None:
        """Stop taking deliveries, let those in flight end (within `grace`), disconnect."""
        self.stopping.set()
        if self.task is not None:
            await stop_task(self.task, grace)
        await self.wakeups.close()
        await self.sender.close()
        await self.engine.dispose()


async def start(settings: Settings) -> WebhooksApp:
    """Connect (lazily) and start delivering."""
    worker_id = settings.worker_id or f"{socket.gethostname()}-{os.getpid()}"
    engine = db.create_engine(
        settings.database_url,
        max(4, settings.webhook_concurrency // 4),
        timeout=settings.database_timeout.total_seconds(),
    )
    sender = Sender(AddressPolicy.of(settings.webhook_allow_networks), settings.webhook_timeout)
    wakeups = Wakeups(settings.database_url, settings.database_timeout.total_seconds())
    wakeups.start()
    worker = DeliveryWorker(
        settings,
        Deliveries(engine, worker_id),
        Endpoints(engine),
        sender,
        storage_for(settings).url_for,
        wakeup=wakeups.event,
    )
    app = WebhooksApp(worker, engine, sender, wakeups)
    app.task = asyncio.create_task(worker.run(app.stopping))
    log.info("webhooks_started", worker_id=worker_id, concurrency=settings.webhook_concurrency)
    return app


def main() -> None:
    process.main("darkroom-webhooks", start)


if __name__ == "__main__":
    main()
