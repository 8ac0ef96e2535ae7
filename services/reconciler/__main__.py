"""`python -m darkroom.services.reconciler`: reconcile every DARKROOM_RECONCILE_INTERVAL.

Runs until SIGTERM."""

from __future__ import annotations

import asyncio

import structlog
from arq.connections import ArqRedis
from sqlalchemy.ext.asyncio import AsyncEngine

from darkroom import db, process, queue
from darkroom.config import Settings
from darkroom.events import EventLog
from darkroom.services.reconciler.reconciler import Reconciler
from darkroom.storage import open_storage
from darkroom.store import JobStore

log = structlog.get_logger("darkroom.reconciler")


def build(settings: Settings) -> tuple[Reconciler, AsyncEngine, ArqRedis]:
    """A reconciler and the connections it owns."""
    engine = db.create_engine(settings.database_url, pool_size=2)
    redis = queue.connect(settings)
    reconciler = Reconciler(
        settings,
        store=JobStore(engine),
        queue=queue.JobQueue(redis, settings),
        event_log=EventLog(redis, settings.key_prefix),
        storage=open_storage(
            settings.storage_url,
            credentials_file=settings.gcs_credentials_file,
            project=settings.gcs_project,
            signed_url_ttl=settings.signed_url_ttl,
        ),
    )
    return reconciler, engine, redis


async def run(settings: Settings) -> None:
    reconciler, engine, redis = build(settings)
    stop = process.stop_signal()
    log.info("reconciler_started", interval_s=settings.reconcile_interval.total_seconds())
    while not stop.is_set():
        try:
            report = await reconciler.run_once()
            if any(report.as_dict().values()):
                log.info("reconciled", **report.as_dict())
        except Exception as exc:  # noqa: BLE001 - a pass fails when Postgres or Redis is down; retry
            log.warning("reconcile_failed", error=repr(exc))
        try:
            async with asyncio.timeout(settings.reconcile_interval.total_seconds()):
                await stop.wait()
        except TimeoutError:
            pass
    await redis.aclose()
    await redis.connection_pool.disconnect()
    await engine.dispose()
    log.info("reconciler_stopped")


def main() -> None:
    process.main("darkroom-reconciler", run)


if __name__ == "__main__":
    main()
