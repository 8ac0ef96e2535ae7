"""Webhook rows as `darkroom.v1` messages."""

from __future__ import annotations

from typing import Any

from darkroom.convert import timestamp
from darkroom.v1 import webhook_pb2, webhooks_service_pb2
from darkroom.webhooks.log import Logged
from darkroom.webhooks.models import DeliveryState, EndpointRow
from darkroom.webhooks.signing import webhook_id

_STATES = {
    DeliveryState.PENDING: webhooks_service_pb2.WEBHOOK_DELIVERY_STATE_PENDING,
    DeliveryState.DELIVERED: webhooks_service_pb2.WEBHOOK_DELIVERY_STATE_DELIVERED,
    DeliveryState.DEAD: webhooks_service_pb2.WEBHOOK_DELIVERY_STATE_DEAD,
}


def endpoint_to_proto(row: EndpointRow) -> webhooks_service_pb2.WebhookEndpoint:
    """An endpoint, without its secrets."""
    endpoint = webhooks_service_pb2.WebhookEndpoint(
        id=str(row.id),
        url=row.url,
        events=[webhook_pb2.WebhookEvent.Value(name) for name in row.events],
        create_time=timestamp(row.created_at),
    )
    if row.previous_secret_expires_at is not None:
        endpoint.previous_secret_expire_time.CopyFrom(timestamp(row.previous_secret_expires_at))
    return endpoint


def delivery_to_proto(logged: Logged) -> webhooks_service_pb2.WebhookDelivery:
    """A delivery and its tries."""
    row = logged.delivery
    state = DeliveryState(row.state)
    delivery = webhooks_service_pb2.WebhookDelivery(
        id=webhook_id(row.id),
        job_id=str(row.job_id),
        endpoint_id="" if row.endpoint_id is None else str(row.endpoint_id),
        url=row.url,
        type=row.type,
        state=_STATES[state],
        create_time=timestamp(row.created_at),
        attempts=[_attempt(attempt) for attempt in logged.attempts],
    )
    if state is DeliveryState.PENDING:
        delivery.next_attempt_time.CopyFrom(timestamp(row.next_attempt_at))
    return delivery


def _attempt(row: Any) -> webhooks_service_pb2.WebhookAttempt:
    attempt = webhooks_service_pb2.WebhookAttempt(
        number=row.number,
        start_time=timestamp(row.started_at),
        status_code=row.status_code or 0,
        error=row.error or "",
        response_body=row.response_body or "",
    )
    if row.ended_at is not None:
        attempt.end_time.CopyFrom(timestamp(row.ended_at))
    return attempt
