"""Webhook tests: settings for loopback receivers and fast schedules, clean tables, real
receivers, in-process delivery workers, and jobs moved through the real life cycle."""

from __future__ import annotations

import asyncio
import itertools
import shutil
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from darkroom.config import Settings
from darkroom.models import JobRecord
from darkroom.services.webhooks.__main__ import WebhooksApp
from darkroom.services.webhooks.__main__ import start as start_webhooks
from darkroom.webhooks.endpoints import Endpoints
from darkroom.webhooks.log import DeliveryLog, Logged
from darkroom.wiring import Resources
from tests.helpers import job_request
from tests.services.webhooks.receiver import Receiver

LEASE = timedelta(seconds=30)
_numbers = itertools.count()

WorkerFactory = Callable[..., Awaitable[WebhooksApp]]
Finish = Callable[..., Awaitable[JobRecord]]


@pytest.fixture
def webhook_settings(settings: Settings) -> Settings:
    """Loopback receivers allowed, a short schedule, timeout and lease, quick polling."""
    return settings.model_copy(
        update={
            "key_prefix": f"{settings.key_prefix}-webhooks-{next(_numbers)}",
            "storage_url": tempfile.mkdtemp(prefix="darkroom-webhooks-storage-"),
            "webhook_allow_http": True,
            "webhook_allow_networks": ["127.0.0.0/8"],
            "webhook_retry_schedule": [
                timedelta(0),
                timedelta(seconds=0.3),
                timedelta(seconds=0.6),
            ],
            "webhook_timeout": timedelta(seconds=1),
            "webhook_lease": timedelta(seconds=2),
            "webhook_poll_interval": timedelta(milliseconds=20),
            "shutdown_grace": timedelta(seconds=1),
            "worker_id": f"webhooks-{uuid.uuid4().hex[:6]}",
        }
    )


@pytest.fixture(autouse=True)
async def clean_webhooks(engine: AsyncEngine) -> None:
    """Each test starts with no endpoints, deliveries or circuits (workers take every due
    delivery in the database)."""
    async with engine.begin() as connection:
        await connection.execute(
            text(
                "TRUNCATE webhook_attempts, webhook_deliveries, webhook_endpoints, "
                "webhook_circuits, webhook_signing_secrets"
            )
        )


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    started = await Receiver().start()
    yield started
    await started.stop()


@pytest.fixture
async def resources(webhook_settings: Settings) -> AsyncIterator[Resources]:
    opened = Resources.open(webhook_settings)
    yield opened
    await opened.close()
    shutil.rmtree(webhook_settings.storage_url, ignore_errors=True)


@pytest.fixture
async def start_worker(webhook_settings: Settings) -> AsyncIterator[WorkerFactory]:
    """`await start_worker(**setting_changes)`: a delivery worker, stopped after the test."""
    started: list[WebhooksApp] = []

    async def start(**changes: Any) -> WebhooksApp:
        app = await start_webhooks(webhook_settings.model_copy(update=changes))
        started.append(app)
        return app

    yield start
    for app in started:
        await app.stop(timedelta(seconds=1))


@pytest.fixture
def finish_job(resources: Resources) -> Finish:
    """`await finish_job(url, owner=..., events=...)`: a job with that webhook, recorded,
    claimed and succeeded through the life cycle; returns the final row."""

    async def finish(
        url: str | None, owner: str = "alice", events: tuple[str, ...] = ("WEBHOOK_EVENT_TERMINAL",)
    ) -> JobRecord:
        webhook = None if url is None else {"url": url, "events": list(events)}
        row, _ = await resources.store.create(owner, job_request(webhook=webhook), 3)
        lifecycle = resources.lifecycle
        claimed = await lifecycle.claim(row.id, 0, "worker-1", LEASE)
        assert claimed is not None
        done = await lifecycle.succeed(row.id, claimed.attempt, [], "tiny", "v1")
        assert done is not None
        return done

    return finish


@pytest.fixture
def endpoints(engine: AsyncEngine) -> Endpoints:
    return Endpoints(engine)


@pytest.fixture
def delivery_log(engine: AsyncEngine) -> DeliveryLog:
    return DeliveryLog(engine)


async def settled(
    delivery_log: DeliveryLog, owner: str, job_id: uuid.UUID, timeout: float = 20
) -> list[Logged]:
    """The job's deliveries once none is PENDING (AssertionError after `timeout` s)."""
    deadline = time.monotonic() + timeout
    while True:
        found = await delivery_log.list(owner, job_id=job_id, limit=100)
        if found and all(logged.delivery.state != "PENDING" for logged in found):
            return found
        assert time.monotonic() < deadline, [logged.delivery.state for logged in found]
        await asyncio.sleep(0.05)
