"""Wiring of the Jobs service: engine, Redis, servicer and gRPC server."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import grpc
from arq.connections import ArqRedis
from sqlalchemy.ext.asyncio import AsyncEngine

from darkroom import db, queue
from darkroom.auth import Authenticator
from darkroom.config import Settings
from darkroom.events import EventLog
from darkroom.lifecycle import Lifecycle
from darkroom.server import RunningServer, create_server
from darkroom.services.jobs.servicer import JobsServicer
from darkroom.services.jobs.submits import SubmitBatcher
from darkroom.storage import open_storage
from darkroom.store import JobInserter, JobStore
from darkroom.v1 import jobs_service_pb2, jobs_service_pb2_grpc

SERVICE_NAME = jobs_service_pb2.DESCRIPTOR.services_by_name["JobsService"].full_name


@dataclass
class JobsApp:
    """A running Jobs service and the connections it owns."""

    running: RunningServer
    servicer: JobsServicer
    engine: AsyncEngine
    redis: ArqRedis
    queue: queue.JobQueue

    @property
    def port(self) -> int:
        return self.running.port

    async def close(self, settings: Settings) -> None:
        """Stop serving (gracefully), then release connections."""
        await self.running.stop(settings.shutdown_grace)
        await self.servicer.submits.close()
        await self.redis.aclose()
        # The pool was handed to ArqRedis, so closing the client does not close it.
        await self.redis.connection_pool.disconnect()
        await self.engine.dispose()


async def start(settings: Settings, address: str | None = None) -> JobsApp:
    """Start the Jobs service on `address` (default: `settings.jobs_address`)."""
    engine = db.create_engine(settings.database_url, settings.database_pool_size)
    redis = queue.connect(settings)
    store = JobStore(engine)
    job_queue = queue.JobQueue(redis, settings)
    event_log = EventLog(redis, settings.key_prefix)
    url_for = open_storage(
        settings.storage_url,
        credentials_file=settings.gcs_credentials_file,
        project=settings.gcs_project,
        signed_url_ttl=settings.signed_url_ttl,
    ).url_for
    servicer = JobsServicer(
        settings,
        lifecycle=Lifecycle(store, event_log, job_queue, url_for),
        submits=SubmitBatcher(
            settings,
            inserter=JobInserter(engine),
            queue=job_queue,
            event_log=event_log,
            redis=redis,
        ),
        authenticator=Authenticator(settings.auth_tokens),
    )

    def register(server: grpc.aio.Server) -> Sequence[str]:
        jobs_service_pb2_grpc.add_JobsServiceServicer_to_server(servicer, server)
        return [SERVICE_NAME]

    running = await create_server(address or settings.jobs_address, register)
    return JobsApp(running, servicer, engine, redis, job_queue)
