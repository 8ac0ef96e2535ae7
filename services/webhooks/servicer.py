"""`darkroom.v1.WebhooksService`: the caller's endpoints, signing secret and delivery log.

Served by the Jobs process. Every call is scoped to the authenticated owner and bounded by
the database timeout (past it: UNAVAILABLE)."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable
from typing import Any, TypeVar

import grpc

from darkroom import db
from darkroom.auth import Authenticator
from darkroom.config import Settings
from darkroom.convert import timestamp
from darkroom.errors import FieldViolation, InvalidArgumentError, UnavailableError
from darkroom.rpc import unary
from darkroom.services.webhooks import pages
from darkroom.v1 import webhooks_service_pb2 as pb
from darkroom.v1 import webhooks_service_pb2_grpc
from darkroom.validation import parse_uuid
from darkroom.webhooks.convert import delivery_to_proto, endpoint_to_proto
from darkroom.webhooks.endpoints import Endpoints
from darkroom.webhooks.errors import DeliveryNotFoundError, EndpointNotFoundError
from darkroom.webhooks.log import DeliveryLog
from darkroom.webhooks.signing import delivery_id
from darkroom.webhooks.urls import event_names, url_violations

Context = grpc.aio.ServicerContext[Any, Any]
T = TypeVar("T")


def _uuid(field: str, value: str) -> uuid.UUID:
    parsed, violations = parse_uuid(field, value)
    if parsed is None:
        raise InvalidArgumentError(f"the {field.replace('_', ' ')} is invalid", violations)
    return parsed


class WebhooksServicer(webhooks_service_pb2_grpc.WebhooksServiceServicer):
    """Handlers of the WebhooksService RPCs."""

    def __init__(
        self,
        settings: Settings,
        endpoints: Endpoints,
        log: DeliveryLog,
        authenticator: Authenticator,
    ) -> None:
        self.settings = settings
        self.endpoints = endpoints
        self.log = log
        self.authenticator = authenticator

    async def _bounded(self, work: Awaitable[T]) -> T:
        try:
            return await db.bounded(work, self.settings.database_timeout.total_seconds())
        except TimeoutError as exc:
            raise UnavailableError(str(exc)) from exc

    @unary("CreateWebhookEndpoint")
    async def CreateWebhookEndpoint(
        self, request: pb.CreateWebhookEndpointRequest, context: Context, owner: str
    ) -> pb.CreateWebhookEndpointResponse:
        given = request.endpoint
        violations = url_violations("endpoint.url", given.url, self.settings)
        events, problems = event_names("endpoint.events", given.events)
        violations += problems
        if violations:
            raise InvalidArgumentError("the webhook endpoint is invalid", violations)
        row, secret = await self._bounded(self.endpoints.create(owner, given.url, events))
        return pb.CreateWebhookEndpointResponse(endpoint=endpoint_to_proto(row), secret=secret)

    @unary("ListWebhookEndpoints")
    async def ListWebhookEndpoints(
        self, request: pb.ListWebhookEndpointsRequest, context: Context, owner: str
    ) -> pb.ListWebhookEndpointsResponse:
        size = pages.page_size(request.page_size)
        after = pages.decode(request.page_token, "endpoints")
        rows = await self._bounded(self.endpoints.list(owner, after=after, limit=size + 1))
        response = pb.ListWebhookEndpointsResponse(
            endpoints=[endpoint_to_proto(row) for row in rows[:size]]
        )
        if len(rows) > size:
            last = rows[size - 1]
            response.next_page_token = pages.encode(last.created_at, last.id, "endpoints")
        return response

    @unary("DeleteWebhookEndpoint")
    async def DeleteWebhookEndpoint(
        self, request: pb.DeleteWebhookEndpointRequest, context: Context, owner: str
    ) -> pb.DeleteWebhookEndpointResponse:
        endpoint_id = _uuid("endpoint_id", request.endpoint_id)
        if not await self._bounded(self.endpoints.delete(owner, endpoint_id)):
            raise EndpointNotFoundError(f"webhook endpoint {endpoint_id} not found")
        return pb.DeleteWebhookEndpointResponse()

    @unary("RotateWebhookEndpointSecret")
    async def RotateWebhookEndpointSecret(
        self, request: pb.RotateWebhookEndpointSecretRequest, context: Context, owner: str
    ) -> pb.RotateWebhookEndpointSecretResponse:
        endpoint_id = _uuid("endpoint_id", request.endpoint_id)
        rotated = await self._bounded(
            self.endpoints.rotate(owner, endpoint_id, self.settings.webhook_rotation_grace)
        )
        if rotated is None:
            raise EndpointNotFoundError(f"webhook endpoint {endpoint_id} not found")
        row, secret = rotated
        return pb.RotateWebhookEndpointSecretResponse(
            endpoint=endpoint_to_proto(row), secret=secret
        )

    @unary("GetWebhookSigningSecret")
    async def GetWebhookSigningSecret(
        self, request: pb.GetWebhookSigningSecretRequest, context: Context, owner: str
    ) -> pb.GetWebhookSigningSecretResponse:
        secret = await self._bounded(self.endpoints.signing_secret(owner))
        return pb.GetWebhookSigningSecretResponse(secret=secret)

    @unary("RotateWebhookSigningSecret")
    async def RotateWebhookSigningSecret(
        self, request: pb.RotateWebhookSigningSecretRequest, context: Context, owner: str
    ) -> pb.RotateWebhookSigningSecretResponse:
        secret, until = await self._bounded(
            self.endpoints.rotate_signing_secret(owner, self.settings.webhook_rotation_grace)
        )
        response = pb.RotateWebhookSigningSecretResponse(secret=secret)
        if until is not None:
            response.previous_secret_expire_time.CopyFrom(timestamp(until))
        return response

    @unary("ListWebhookDeliveries")
    async def ListWebhookDeliveries(
        self, request: pb.ListWebhookDeliveriesRequest, context: Context, owner: str
    ) -> pb.ListWebhookDeliveriesResponse:
        if bool(request.job_id) == bool(request.endpoint_id):
            raise InvalidArgumentError(
                "name a job or an endpoint",
                [FieldViolation("job_id", "exactly one of job_id and endpoint_id is required")],
            )
        job_id = _uuid("job_id", request.job_id) if request.job_id else None
        endpoint_id = _uuid("endpoint_id", request.endpoint_id) if request.endpoint_id else None
        scope = f"job:{job_id}" if job_id else f"endpoint:{endpoint_id}"
        size = pages.page_size(request.page_size)
        after = pages.decode(request.page_token, scope)
        found = await self._bounded(
            self.log.list(
                owner, job_id=job_id, endpoint_id=endpoint_id, after=after, limit=size + 1
            )
        )
        response = pb.ListWebhookDeliveriesResponse(
            deliveries=[delivery_to_proto(logged) for logged in found[:size]]
        )
        if len(found) > size:
            last = found[size - 1].delivery
            response.next_page_token = pages.encode(last.created_at, last.id, scope)
        return response

    @unary("RedeliverWebhook")
    async def RedeliverWebhook(
        self, request: pb.RedeliverWebhookRequest, context: Context, owner: str
    ) -> pb.RedeliverWebhookResponse:
        target = _uuid("delivery_id", delivery_id(request.delivery_id))
        logged = await self._bounded(self.log.redeliver(owner, target))
        if logged is None:
            raise DeliveryNotFoundError(f"webhook delivery {request.delivery_id} not found")
        return pb.RedeliverWebhookResponse(delivery=delivery_to_proto(logged))
