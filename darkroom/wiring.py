"""The composition root: every shared resource a process needs, built once from settings.

Each process (`darkroom-jobs`, `-events`, `-generator`, `-reconciler`), and the tests and
the bench that start them in-process, build what they share here: the database engine,
the Redis client that speaks arq, storage, the event log, the queue and the life cycle.
`Resources.close` releases them in one place.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncEngine

from darkroom import db, queue
from darkroom.capacity import Capacity
from darkroom.config import Settings
from darkroom.events import EventLog
from darkroom.lifecycle import Hooks, Lifecycle
from darkroom.storage import Storage, open_storage
from darkroom.store import JobStore


def storage_for(settings: Settings) -> Storage:
    """The storage `DARKROOM_STORAGE_URL` names, with its credentials and URL lifetime."""
    return open_storage(
        settings.storage_url,
        credentials_file=settings.gcs_credentials_file,
        project=settings.gcs_project,
        signed_url_ttl=settings.signed_url_ttl,
    )


@dataclass
class Resources:
    """What a process shares: connections first, then what is built on them."""

    settings: Settings
    engine: AsyncEngine
    redis: queue.QueueRedis
    storage: Storage
    store: JobStore
    event_log: EventLog
    queue: queue.JobQueue
    lifecycle: Lifecycle

    @classmethod
    def open(
        cls,
        settings: Settings,
        *,
        pool_size: int | None = None,
        hold_connection: bool = False,
        hooks: Hooks | None = None,
        redis_timeout: float | None = None,
    ) -> Resources:
        """Connect lazily (a process starts while Postgres or Redis is still down).

        `hold_connection`: the store's transitions share one held connection (the
        generator's claims and lease renewals). `hooks`: fault points, from tests only.
        `redis_timeout`: how long any Redis reply may take (a request path's; not for a
        process that blocks on Redis commands)."""
        engine = db.create_engine(
            settings.database_url,
            pool_size or settings.database_pool_size,
            timeout=settings.database_timeout.total_seconds(),
        )
        redis = queue.connect(settings, socket_timeout=redis_timeout)
        storage = storage_for(settings)
        # A held connection's calls are bounded too: a database that takes the bytes and
        # never answers must not stall a generator's lease renewals for good.
        store = JobStore(
            engine,
            hold_connection=hold_connection,
            timeout=settings.database_timeout.total_seconds(),
        )
        event_log = EventLog(redis, settings.key_prefix)
        job_queue = queue.JobQueue(redis, settings)
        lifecycle = Lifecycle(
            store,
            event_log,
            job_queue,
            storage.url_for,
            hooks=hooks,
            capacity=Capacity(redis, settings.keys),
        )
        return cls(settings, engine, redis, storage, store, event_log, job_queue, lifecycle)

    async def close(self) -> None:
        """Release every connection (the pool was handed to ArqRedis, so it is closed too)."""
        await self.store.close()
        await self.redis.aclose()
        await self.redis.connection_pool.disconnect()
        await self.engine.dispose()
