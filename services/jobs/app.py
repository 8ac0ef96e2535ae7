"""Wiring of the Jobs service: its resources, servicer and gRPC server."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta

import grpc

from darkroom import queue
from darkroom.admission import SubmitAdmission
from darkroom.auth import Authenticator
from darkroom.config import Settings
from darkroom.inserts import JobInserter
from darkroom.positions import QueueView
from darkroom.server import RunningServer, create_server, prepare_listener
from darkroom.services.jobs.servicer import JobsServicer
from darkroom.services.jobs.submits import SubmitBatcher
from darkroom.services.webhooks.servicer import WebhooksServicer
from darkroom.v1 import (
    jobs_service_pb2,
    jobs_service_pb2_grpc,
    webhooks_service_pb2,
    webhooks_service_pb2_grpc,
)
from darkroom.webhooks.endpoints import Endpoints
from darkroom.webhooks.log import DeliveryLog
from darkroom.wiring import Resources

SERVICE_NAME = jobs_service_pb2.DESCRIPTOR.services_by_name["JobsService"].full_name
WEBHOOKS_SERVICE_NAME = webhooks_service_pb2.DESCRIPTOR.services_by_name[
    "WebhooksService"
].full_name


@dataclass
class JobsApp:
    """A running Jobs service and the resources it owns."""

    running: RunningServer
    servicer: JobsServicer
    resources: Resources

    @property
    def port(self) -> int:
        return self.running.port

    @property
    def queue(self) -> queue.JobQueue:
        return self.resources.queue

    async def wait(self) -> None:
        """Until the server ends (it only does when stopped)."""
        await self.running.server.wait_for_termination()

    async def stop(self, grace: timedelta) -> None:
        """Stop serving (in-flight calls get `grace`), then release the connections."""
        await self.running.stop(grace)
        await self.servicer.submits.close()
        await self.resources.close()


async def start(settings: Settings, address: str | None = None) -> JobsApp:
    """Start the Jobs service on `address` (default: `settings.jobs_address`)."""
    listen = prepare_listener(
        address or settings.jobs_address, settings, health_address=settings.jobs_health_address
    )
    # No Redis call of a request waits longer than the enqueue timeout (this process
    # never blocks on a Redis command), no database call longer than the database's.
    resources = Resources.open(settings, redis_timeout=settings.enqueue_timeout.total_seconds())
    servicer = JobsServicer(
        settings,
        lifecycle=resources.lifecycle,
        submits=SubmitBatcher(
            settings,
            inserter=JobInserter(
                resources.engine, timeout=settings.database_timeout.total_seconds()
            ),
            queue=resources.queue,
            event_log=resources.event_log,
            redis=resources.redis,
        ),
        authenticator=Authenticator(settings.auth_tokens),
        admission=SubmitAdmission(resources.redis, settings),
        queue_view=QueueView(resources.redis, settings),
    )

    webhooks = WebhooksServicer(
        settings,
        Endpoints(resources.engine),
        DeliveryLog(resources.engine),
        servicer.authenticator,
    )

    def register(server: grpc.aio.Server) -> Sequence[str]:
        jobs_service_pb2_grpc.add_JobsServiceServicer_to_server(servicer, server)
        webhooks_service_pb2_grpc.add_WebhooksServiceServicer_to_server(webhooks, server)
        return [SERVICE_NAME, WEBHOOKS_SERVICE_NAME]

    running = await create_server(listen, register)
    return JobsApp(running, servicer, resources)
