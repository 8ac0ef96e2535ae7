"""`AsyncWebhooks`: the caller's webhook endpoints, signing secret and delivery log
(`darkroom.v1.WebhooksService`, on the Jobs target). Reached as `client.webhooks`.

Reads are retried like the client's other reads; deletes and redeliveries on UNAVAILABLE
only; creates and rotations are not retried (each try would make another secret).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from typing import TypeAlias, TypeVar

import grpc

from darkroom.v1 import webhook_pb2, webhooks_service_pb2, webhooks_service_pb2_grpc
from darkroom_client.retry import IDEMPOTENT, UNAVAILABLE, RetryPolicy, with_retries

T = TypeVar("T")
# A WebhookEvent value, or a name such as "terminal".
EventName: TypeAlias = "str | webhook_pb2.WebhookEvent.ValueType"
Metadata = tuple[tuple[str, str], ...]
EVENT_NAMES = {
    "terminal": webhook_pb2.WEBHOOK_EVENT_TERMINAL,
    "started": webhook_pb2.WEBHOOK_EVENT_STARTED,
    "progress": webhook_pb2.WEBHOOK_EVENT_PROGRESS,
}
NO_RETRY: frozenset[grpc.StatusCode] = frozenset()


def parse_events(events: Iterable[EventName]) -> list[webhook_pb2.WebhookEvent.ValueType]:
    """Webhook events from short names (`"terminal"`, `"started"`, `"progress"`), full
    names or values."""
    parsed = []
    for event in events:
        if isinstance(event, str):
            name = event.strip().lower().removeprefix("webhook_event_")
            if name not in EVENT_NAMES:
                raise ValueError(
                    f"unknown webhook event {event!r}; use one of {', '.join(EVENT_NAMES)}"
                )
            parsed.append(EVENT_NAMES[name])
        else:
            parsed.append(event)
    return parsed


class AsyncWebhooks:
    """WebhooksService calls with the client's token, deadline and retry policy."""

    def __init__(
        self,
        stub: Callable[[], webhooks_service_pb2_grpc.WebhooksServiceAsyncStub],
        metadata: Metadata,
        timeout: float,
        retry: RetryPolicy,
    ) -> None:
        self._stub = stub
        self._metadata = metadata
        self._timeout = timeout
        self._retry = retry

    async def _call(
        self, call: Callable[[float, Metadata], Awaitable[T]], retry_on: frozenset[grpc.StatusCode]
    ) -> T:
        async def attempt(_: int) -> T:
            return await call(self._timeout, self._metadata)

        return await with_retries(attempt, policy=self._retry, retry_on=retry_on)

    async def create_endpoint(
        self, url: str, events: Iterable[EventName] = ()
    ) -> webhooks_service_pb2.CreateWebhookEndpointResponse:
        """Register `url` for every job's `events` (default: terminal); the response holds
        the endpoint's secret, returned this once."""
        endpoint = webhooks_service_pb2.WebhookEndpoint(url=url, events=parse_events(events))
        request = webhooks_service_pb2.CreateWebhookEndpointRequest(endpoint=endpoint)
        return await self._call(
            lambda t, m: self._stub().CreateWebhookEndpoint(request, metadata=m, timeout=t),
            NO_RETRY,
        )

    async def list_endpoints(
        self, *, page_size: int = 0, page_token: str = ""
    ) -> webhooks_service_pb2.ListWebhookEndpointsResponse:
        """One page of the caller's endpoints, newest first."""
        request = webhooks_service_pb2.ListWebhookEndpointsRequest(
            page_size=page_size, page_token=page_token
        )
        return await self._call(
            lambda t, m: self._stub().ListWebhookEndpoints(request, metadata=m, timeout=t),
            IDEMPOTENT,
        )

    async def delete_endpoint(self, endpoint_id: str) -> None:
        """Delete an endpoint (its pending deliveries are not sent)."""
        request = webhooks_service_pb2.DeleteWebhookEndpointRequest(endpoint_id=endpoint_id)
        await self._call(
            lambda t, m: self._stub().DeleteWebhookEndpoint(request, metadata=m, timeout=t),
            UNAVAILABLE,
        )

    async def rotate_secret(
        self, endpoint_id: str
    ) -> webhooks_service_pb2.RotateWebhookEndpointSecretResponse:
        """A new secret for an endpoint; the previous one signs beside it for a while."""
        request = webhooks_service_pb2.RotateWebhookEndpointSecretRequest(endpoint_id=endpoint_id)
        return await self._call(
            lambda t, m: self._stub().RotateWebhookEndpointSecret(request, metadata=m, timeout=t),
            NO_RETRY,
        )

    async def signing_secret(self) -> str:
        """The secret that signs calls to the caller's jobs' own webhooks."""
        request = webhooks_service_pb2.GetWebhookSigningSecretRequest()
        response = await self._call(
            lambda t, m: self._stub().GetWebhookSigningSecret(request, metadata=m, timeout=t),
            IDEMPOTENT,
        )
        return response.secret

    async def rotate_signing_secret(
        self,
    ) -> webhooks_service_pb2.RotateWebhookSigningSecretResponse:
        """A new secret for the caller's jobs' own webhooks (the old one signs on a while)."""
        request = webhooks_service_pb2.RotateWebhookSigningSecretRequest()
        return await self._call(
            lambda t, m: self._stub().RotateWebhookSigningSecret(request, metadata=m, timeout=t),
            NO_RETRY,
        )

    async def list_deliveries(
        self,
        *,
        job_id: str = "",
        endpoint_id: str = "",
        page_size: int = 0,
        page_token: str = "",
    ) -> webhooks_service_pb2.ListWebhookDeliveriesResponse:
        """One page of the calls made for a job or to an endpoint, with their tries."""
        request = webhooks_service_pb2.ListWebhookDeliveriesRequest(
            job_id=job_id, endpoint_id=endpoint_id, page_size=page_size, page_token=page_token
        )
        return await self._call(
            lambda t, m: self._stub().ListWebhookDeliveries(request, metadata=m, timeout=t),
            IDEMPOTENT,
        )

    async def redeliver(self, delivery_id: str) -> webhooks_service_pb2.WebhookDelivery:
        """Send a delivery again from its first try, with the same `webhook-id`."""
        request = webhooks_service_pb2.RedeliverWebhookRequest(delivery_id=delivery_id)
        response = await self._call(
            lambda t, m: self._stub().RedeliverWebhook(request, metadata=m, timeout=t),
            UNAVAILABLE,
        )
        return response.delivery
