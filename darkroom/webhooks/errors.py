"""The webhook errors callers see (mapped to gRPC like every `DarkroomError`)."""

from __future__ import annotations

from darkroom.errors import NotFoundError


class EndpointNotFoundError(NotFoundError):
    """No such endpoint for this caller (another owner's is not revealed)."""

    reason = "WEBHOOK_ENDPOINT_NOT_FOUND"


class DeliveryNotFoundError(NotFoundError):
    """No such delivery for this caller."""

    reason = "WEBHOOK_DELIVERY_NOT_FOUND"
