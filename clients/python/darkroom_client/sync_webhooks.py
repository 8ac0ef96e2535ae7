"""`Webhooks`: `AsyncWebhooks` for blocking code, reached as `DarkroomClient.webhooks`."""

from __future__ import annotations

from collections.abc import Coroutine, Iterable
from typing import Any, Protocol, TypeVar

from darkroom.v1 import webhooks_service_pb2
from darkroom_client.webhooks import AsyncWebhooks, EventName

T = TypeVar("T")


class Runner(Protocol):
    """Runs a coroutine on the client's loop and returns its result."""

    def __call__(self, coroutine: Coroutine[Any, Any, T]) -> T: ...


class Webhooks:
    """The same methods as `AsyncWebhooks`, without `await`."""

    def __init__(self, calls: AsyncWebhooks, run: Runner) -> None:
        self._calls = calls
        self._run = run

    def create_endpoint(
        self, url: str, events: Iterable[EventName] = ()
    ) -> webhooks_service_pb2.CreateWebhookEndpointResponse:
        return self._run(self._calls.create_endpoint(url, events))

    def list_endpoints(
        self, *, page_size: int = 0, page_token: str = ""
    ) -> webhooks_service_pb2.ListWebhookEndpointsResponse:
        return self._run(self._calls.list_endpoints(page_size=page_size, page_token=page_token))

    def delete_endpoint(self, endpoint_id: str) -> None:
        self._run(self._calls.delete_endpoint(endpoint_id))

    def rotate_secret(
        self, endpoint_id: str
    ) -> webhooks_service_pb2.RotateWebhookEndpointSecretResponse:
        return self._run(self._calls.rotate_secret(endpoint_id))

    def signing_secret(self) -> str:
        return self._run(self._calls.signing_secret())

    def rotate_signing_secret(self) -> webhooks_service_pb2.RotateWebhookSigningSecretResponse:
        return self._run(self._calls.rotate_signing_secret())

    def list_deliveries(
        self, *, job_id: str = "", endpoint_id: str = "", page_size: int = 0, page_token: str = ""
    ) -> webhooks_service_pb2.ListWebhookDeliveriesResponse:
        return self._run(
            self._calls.list_deliveries(
                job_id=job_id, endpoint_id=endpoint_id, page_size=page_size, page_token=page_token
            )
        )

    def redeliver(self, delivery_id: str) -> webhooks_service_pb2.WebhookDelivery:
        return self._run(self._calls.redeliver(delivery_id))
