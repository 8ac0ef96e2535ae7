"""WebhooksService over a real gRPC server: endpoints, rotation, the signing secret, the
delivery log and redelivery, and refusals that write nothing."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TypeAlias

import grpc
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from darkroom.config import Settings
from darkroom.services.jobs.app import start as start_jobs
from darkroom.v1 import job_pb2, jobs_service_pb2, webhooks_service_pb2_grpc
from darkroom.v1 import webhooks_service_pb2 as pb
from darkroom.v1.webhook_pb2 import WebhookEvent
from darkroom.webhooks.log import DeliveryLog
from tests.helpers import new_request_id, rich_error
from tests.services.webhooks.conftest import Finish, WorkerFactory, settled
from tests.services.webhooks.receiver import Receiver

ALICE = (("authorization", "Bearer alice-token"),)
BOB = (("authorization", "Bearer bob-token"),)
# The asyncio stub type exists for type checkers only: named as a string.
Stub: TypeAlias = "webhooks_service_pb2_grpc.WebhooksServiceAsyncStub"


@pytest.fixture
async def channel(webhook_settings: Settings) -> AsyncIterator[grpc.aio.Channel]:
    app = await start_jobs(webhook_settings, "127.0.0.1:0")
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as opened:
        yield opened
    await app.stop(webhook_settings.shutdown_grace)


@pytest.fixture
def stub(channel: grpc.aio.Channel) -> Stub:
    return webhooks_service_pb2_grpc.WebhooksServiceStub(channel)


async def _create(stub: Stub, url: str, *events: int) -> pb.CreateWebhookEndpointResponse:
    request = pb.CreateWebhookEndpointRequest(
        endpoint=pb.WebhookEndpoint(url=url, events=[WebhookEvent.ValueType(e) for e in events])
    )
    return await stub.CreateWebhookEndpoint(request, metadata=ALICE, timeout=10)


async def _endpoint_count(engine: AsyncEngine) -> int:
    async with engine.connect() as connection:
        return int((await connection.scalar(text("SELECT count(*) FROM webhook_endpoints"))) or 0)


async def test_endpoints_are_created_listed_in_pages_and_deleted(stub: Stub) -> None:
    first = await _create(stub, "https://hooks.example.com/a")
    second = await _create(stub, "https://hooks.example.com/b", 2, 1)
    assert first.secret.startswith("whsec_")
    assert first.secret != second.secret
    assert list(first.endpoint.events) == [1]  # terminal by default
    page = await stub.ListWebhookEndpoints(
        pb.ListWebhookEndpointsRequest(page_size=1), metadata=ALICE
    )
    assert [e.url for e in page.endpoints] == ["https://hooks.example.com/b"]
    rest = await stub.ListWebhookEndpoints(
        pb.ListWebhookEndpointsRequest(page_size=1, page_token=page.next_page_token),
        metadata=ALICE,
    )
    assert [e.url for e in rest.endpoints] == ["https://hooks.example.com/a"]
    assert rest.next_page_token == ""
    for owner in (BOB, ALICE):  # another owner's endpoint does not exist for them
        request = pb.DeleteWebhookEndpointRequest(endpoint_id=first.endpoint.id)
        if owner is BOB:
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stub.DeleteWebhookEndpoint(request, metadata=owner)
            assert rich_error(refused.value).reason == "WEBHOOK_ENDPOINT_NOT_FOUND"
        else:
            await stub.DeleteWebhookEndpoint(request, metadata=owner)
    left = await stub.ListWebhookEndpoints(pb.ListWebhookEndpointsRequest(), metadata=ALICE)
    assert [e.id for e in left.endpoints] == [second.endpoint.id]
    bobs = await stub.ListWebhookEndpoints(pb.ListWebhookEndpointsRequest(), metadata=BOB)
    assert list(bobs.endpoints) == []


@pytest.mark.parametrize(
    ("url", "events", "field", "says"),
    [
        ("", [], "endpoint.url", "is required"),
        ("ftp://hooks.example.com/", [], "endpoint.url", "absolute https://"),
        ("/relative/path", [], "endpoint.url", "absolute https://"),
        ("http://hooks.example.com/", [], "endpoint.url", "must use https://"),
        ("https://user:pw@hooks.example.com/", [], "endpoint.url", "user name or password"),
        ("https://hooks.example.com/" + "a" * 2_048, [], "endpoint.url", "at most 2,048"),
        ("https://10.1.2.3/hook", [], "endpoint.url", "private"),
        ("https://169.254.169.254/latest", [], "endpoint.url", "link-local"),
        ("https://hooks.example.com/ x", [], "endpoint.url", "spaces"),
        ("https://hooks.example.com:99999/", [], "endpoint.url", "not a valid URL"),
        ("https://hooks.example.com/", [1, 1], "endpoint.events", "twice"),
        ("https://hooks.example.com/", [0], "endpoint.events", "WebhookEvent"),
    ],
)
async def test_an_invalid_endpoint_is_refused_and_nothing_is_written(
    stub: Stub, engine: AsyncEngine, url: str, events: list[int], field: str, says: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await _create(stub, url, *events)
    error = rich_error(refused.value)
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert says in error.violations[field]
    assert await _endpoint_count(engine) == 0


async def test_http_is_for_loopback_only_and_only_in_development(
    jobs_app: object, webhook_settings: Settings, stub: Stub
) -> None:
    from darkroom.webhooks.urls import url_violations  # noqa: PLC0415

    assert (await _create(stub, "http://127.0.0.1:9/hook")).endpoint.url
    assert url_violations("u", "http://localhost:9/", webhook_settings) == []
    production = webhook_settings.model_copy(
        update={"webhook_allow_http": False, "webhook_allow_networks": []}
    )
    assert (
        "must use https://" in url_violations("u", "http://127.0.0.1:9/", production)[0].description
    )


async def test_a_submit_with_a_bad_webhook_writes_nothing_and_a_good_one_is_recorded(
    channel: grpc.aio.Channel, engine: AsyncEngine
) -> None:
    from darkroom.v1 import jobs_service_pb2_grpc, webhook_pb2  # noqa: PLC0415

    jobs = jobs_service_pb2_grpc.JobsServiceStub(channel)

    def submit(url: str) -> jobs_service_pb2.SubmitJobRequest:
        spec = job_pb2.JobSpec(prompt="a lighthouse", webhook=webhook_pb2.JobWebhook(url=url))
        return jobs_service_pb2.SubmitJobRequest(request_id=new_request_id(), spec=spec)

    async with engine.connect() as connection:
        before = await connection.scalar(text("SELECT count(*) FROM jobs"))
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await jobs.SubmitJob(submit("https://u:p@hooks.example.com/"), metadata=ALICE)
    assert "user name" in rich_error(refused.value).violations["spec.webhook.url"]
    async with engine.connect() as connection:
        assert await connection.scalar(text("SELECT count(*) FROM jobs")) == before
    created = await jobs.SubmitJob(submit("https://hooks.example.com/done"), metadata=ALICE)
    assert created.job.spec.webhook.url == "https://hooks.example.com/done"
    assert list(created.job.spec.webhook.events) == [webhook_pb2.WEBHOOK_EVENT_TERMINAL]


async def test_during_rotation_both_secrets_sign(
    stub: Stub, receiver: Receiver, finish_job: Finish, start_worker: WorkerFactory
) -> None:
    created = await _create(stub, receiver.url("/endpoint"))
    rotated = await stub.RotateWebhookEndpointSecret(
        pb.RotateWebhookEndpointSecretRequest(endpoint_id=created.endpoint.id), metadata=ALICE
    )
    assert rotated.secret != created.secret
    assert rotated.endpoint.HasField("previous_secret_expire_time")
    await finish_job(None)  # no webhook of its own: only the endpoint is called
    await start_worker()
    [call] = await receiver.wait_for(1)
    assert call.verify(created.secret) == call.verify(rotated.secret)
    assert len(call.headers["webhook-signature"].split(" ")) == 2


async def test_the_log_shows_tries_and_a_redelivery_keeps_the_id(
    stub: Stub,
    receiver: Receiver,
    finish_job: Finish,
    start_worker: WorkerFactory,
    delivery_log: DeliveryLog,
) -> None:
    receiver.script = ["fail"]
    endpoint = await _create(stub, receiver.url("/endpoint"))
    row = await finish_job(receiver.url("/own"))
    await start_worker()
    await settled(delivery_log, "alice", row.id)
    secret = (
        await stub.GetWebhookSigningSecret(pb.GetWebhookSigningSecretRequest(), metadata=ALICE)
    ).secret
    listed = await stub.ListWebhookDeliveries(
        pb.ListWebhookDeliveriesRequest(job_id=str(row.id)), metadata=ALICE
    )
    assert {d.state for d in listed.deliveries} == {pb.WEBHOOK_DELIVERY_STATE_DELIVERED}
    assert {d.endpoint_id for d in listed.deliveries} == {"", endpoint.endpoint.id}
    by_endpoint = await stub.ListWebhookDeliveries(
        pb.ListWebhookDeliveriesRequest(endpoint_id=endpoint.endpoint.id), metadata=ALICE
    )
    [to_endpoint] = by_endpoint.deliveries
    tried = next(d for d in listed.deliveries if d.endpoint_id == "")
    assert [a.status_code for a in [*tried.attempts, *to_endpoint.attempts]].count(500) == 1
    assert all(a.HasField("end_time") for a in tried.attempts)
    redelivered = await stub.RedeliverWebhook(
        pb.RedeliverWebhookRequest(delivery_id=tried.id), metadata=ALICE
    )
    assert redelivered.delivery.state == pb.WEBHOOK_DELIVERY_STATE_PENDING
    calls = await receiver.wait_for(len(receiver.received) + 1)
    assert calls[-1].id == tried.id
    calls[-1].verify(secret)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stub.RedeliverWebhook(pb.RedeliverWebhookRequest(delivery_id=tried.id), metadata=BOB)
    assert rich_error(refused.value).reason == "WEBHOOK_DELIVERY_NOT_FOUND"
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stub.ListWebhookDeliveries(pb.ListWebhookDeliveriesRequest(), metadata=ALICE)
    assert rich_error(refused.value).code == grpc.StatusCode.INVALID_ARGUMENT


async def test_deleting_an_endpoint_ends_its_pending_deliveries(
    stub: Stub, receiver: Receiver, finish_job: Finish, delivery_log: DeliveryLog
) -> None:
    endpoint = await _create(stub, receiver.url("/endpoint"))
    row = await finish_job(None)
    await stub.DeleteWebhookEndpoint(
        pb.DeleteWebhookEndpointRequest(endpoint_id=endpoint.endpoint.id), metadata=ALICE
    )
    [logged] = await settled(delivery_log, "alice", row.id, timeout=1)
    assert (logged.delivery.state, logged.delivery.last_error) == (
        "DEAD",
        "the endpoint was deleted",
    )


async def test_the_job_webhook_secret_rotates_with_both_signing_meanwhile(
    stub: Stub, receiver: Receiver, finish_job: Finish, start_worker: WorkerFactory
) -> None:
    old = (
        await stub.GetWebhookSigningSecret(pb.GetWebhookSigningSecretRequest(), metadata=ALICE)
    ).secret
    rotated = await stub.RotateWebhookSigningSecret(
        pb.RotateWebhookSigningSecretRequest(), metadata=ALICE
    )
    assert rotated.secret != old
    assert rotated.HasField("previous_secret_expire_time")
    current = await stub.GetWebhookSigningSecret(
        pb.GetWebhookSigningSecretRequest(), metadata=ALICE
    )
    assert current.secret == rotated.secret
    await finish_job(receiver.url())
    await start_worker()
    [call] = await receiver.wait_for(1)
    assert call.verify(old) == call.verify(rotated.secret)
    bobs = await stub.GetWebhookSigningSecret(pb.GetWebhookSigningSecretRequest(), metadata=BOB)
    assert bobs.secret not in {old, rotated.secret}
