"""Wiring of the Events service: engine, Redis (a fixed, small pool), notifier, server."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta

import grpc
import redis.asyncio
from sqlalchemy.ext.asyncio import AsyncEngine

from darkroom import db
from darkroom.admission import WatchAdmission
from darkroom.auth import Authenticator
from darkroom.config import Settings
from darkroom.positions import PositionBoard, QueueView
from darkroom.server import RunningServer, create_server, prepare_listener
from darkroom.services.events.notifier import Notifier
from darkroom.services.events.servicer import EventsServicer
from darkroom.services.events.watch import Watch, WatchSettings
from darkroom.store import JobStore
from darkroom.v1 import events_service_pb2, events_service_pb2_grpc
from darkroom.wiring import storage_for

SERVICE_NAME = events_service_pb2.DESCRIPTOR.services_by_name["EventsService"].full_name
# Stream reads share this many connections, whatever the number of watchers; the
# notifier holds one more: four in all.
READ_CONNECTIONS = 3


def _client(
    settings: Settings, connections: int, socket_timeout: float | None = None
) -> redis.asyncio.Redis:
    pool = redis.asyncio.BlockingConnectionPool.from_url(
        settings.redis_url,
        max_connections=connections,
        timeout=None,
        socket_connect_timeout=2,
        socket_timeout=socket_timeout,
        health_check_interval=30,
        client_name=f"darkroom-events-{os.getpid()}",
    )
    return redis.asyncio.Redis(connection_pool=pool)


@dataclass
class EventsApp:
    """A running Events service and the connections it owns."""

    running: RunningServer
    notifier: Notifier
    engine: AsyncEngine
    readers: redis.asyncio.Redis
    listener: redis.asyncio.Redis
    admission: WatchAdmission
    positions: PositionBoard

    @property
    def port(self) -> int:
        return self.running.port

    async def wait(self) -> None:
        """Until the server ends (it only does when stopped)."""
        await self.running.server.wait_for_termination()

    async def stop(self, grace: timedelta) -> None:
        """End every open stream with UNAVAILABLE, stop serving, release connections."""
        await self.running.health.enter_graceful_shutdown()
        await self.notifier.close()
        await self.running.stop(grace)
        await self.positions.close()
        await self.admission.close()
        for client in (self.readers, self.listener):
            await client.aclose()
            await client.connection_pool.disconnect()
        await self.engine.dispose()


async def start(settings: Settings, address: str | None = None) -> EventsApp:
    """Start the Events service on `address` (default: `settings.events_address`)."""
    listen = prepare_listener(
        address or settings.events_address, settings, health_address=settings.events_health_address
    )
    engine = db.create_engine(
        settings.database_url,
        settings.database_pool_size,
        timeout=settings.database_timeout.total_seconds(),
    )
    # Stream reads never block: a Redis that stops answering fails them (the watchers
    # fall back to the row). The listener blocks on pub/sub, so it has no such timeout.
    readers = _client(settings, READ_CONNECTIONS, settings.enqueue_timeout.total_seconds())
    listener = _client(settings, 1)
    notifier = Notifier(listener, readers, settings.keys)
    await notifier.start()
    # Every watched queued job's position, looked at together once an interval.
    # (Its snapshots are at most an interval old, as the passes are an interval apart.)
    interval = settings.watch_position_interval
    view = QueueView(readers, settings, max_age=min(1.0, interval.total_seconds()))
    positions = PositionBoard(view, interval)
    positions.start()
    watch = Watch(
        store=JobStore(engine),
        redis=readers,
        notifier=notifier,
        key_prefix=settings.key_prefix,
        settings=WatchSettings(
            row_poll=settings.watch_row_poll,
            idle_check=settings.watch_idle_check,
            database_timeout=settings.database_timeout,
        ),
        url_for=storage_for(settings).url_for,
        positions=positions,
    )
    admission = WatchAdmission(readers, settings)
    await admission.start()
    servicer = EventsServicer(watch, Authenticator(settings.auth_tokens), admission)

    def register(server: grpc.aio.Server) -> Sequence[str]:
        events_service_pb2_grpc.add_EventsServiceServicer_to_server(servicer, server)
        return [SERVICE_NAME]

    running = await create_server(listen, register)
    return EventsApp(running, notifier, engine, readers, listener, admission, positions)
