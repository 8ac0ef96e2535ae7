"""Webhooks from the client's side, on a whole stack (Jobs, Events, a Generator, and a
delivery worker): a job submitted with a webhook URL calls it once, signed; endpoints
hear every job; the CLI shows the log and redelivers."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import timedelta

import pytest

from darkroom.services.webhooks.__main__ import start as start_webhooks
from darkroom.v1 import webhooks_service_pb2
from tests.clients.conftest import Stack, StackFactory
from tests.services.webhooks.receiver import Receiver

BOB = "bob-token"  # an owner of its own: alice's endpoints stay out of it
WEBHOOKS = {
    "webhook_allow_http": True,
    "webhook_allow_networks": ["127.0.0.0/8"],
    "webhook_poll_interval": timedelta(milliseconds=20),
}


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    started = await Receiver().start()
    yield started
    await started.stop()


@pytest.fixture
async def stack(make_stack: StackFactory) -> AsyncIterator[Stack]:
    started = await make_stack(**WEBHOOKS)
    worker = await start_webhooks(started.settings)
    yield started
    await worker.stop(timedelta(seconds=1))


async def _all_delivered(stack: Stack, job_id: str, token: str = "alice-token") -> None:
    """Until the job's deliveries are recorded DELIVERED (the answers arrive first)."""
    client = stack.client(token)
    for _ in range(100):
        page = await client.webhooks.list_deliveries(job_id=job_id)
        delivered = webhooks_service_pb2.WEBHOOK_DELIVERY_STATE_DELIVERED
        if page.deliveries and all(d.state == delivered for d in page.deliveries):
            return
        await asyncio.sleep(0.05)
    raise AssertionError(page)


async def test_a_submitted_webhook_and_an_endpoint_are_called_signed(
    stack: Stack, receiver: Receiver
) -> None:
    client = stack.client()
    endpoint = await client.webhooks.create_endpoint(receiver.url("/all"), ["started", "terminal"])
    try:
        await _generate_and_check(stack, receiver, endpoint)
    finally:  # other tests' jobs of this owner must not call it
        await client.webhooks.delete_endpoint(endpoint.endpoint.id)


async def _generate_and_check(
    stack: Stack, receiver: Receiver, endpoint: webhooks_service_pb2.CreateWebhookEndpointResponse
) -> None:
    client = stack.client()
    result = await client.generate(
        "a lighthouse", width=64, height=64, steps=2, webhook={"url": receiver.url("/own")}
    )
    calls = await receiver.wait_for(3)
    succeeded = [call for call in calls if b'"type":"job.succeeded"' in call.body]
    assert len(succeeded) == 2  # the job's own webhook and the endpoint, each once
    secret = await client.webhooks.signing_secret()
    payloads = []
    for call in calls:
        try:
            payloads.append(("own", call.verify(secret)))
        except Exception:  # noqa: BLE001 - signed by the endpoint's secret instead
            payloads.append(("endpoint", call.verify(endpoint.secret)))
    assert sorted((who, p["type"]) for who, p in payloads) == [
        ("endpoint", "job.started"),
        ("endpoint", "job.succeeded"),
        ("own", "job.succeeded"),
    ]
    data = next(p for who, p in payloads if who == "own")["data"]
    assert isinstance(data, dict)
    assert data["id"] == result.job.id
    assert data["outputs"][0]["url"]  # a URL to fetch it from, never the bytes
    await _all_delivered(stack, result.job.id)
    page = await client.webhooks.list_deliveries(job_id=result.job.id)
    assert len(page.deliveries) == 3
    listed = await client.webhooks.list_endpoints()
    assert [e.id for e in listed.endpoints] == [endpoint.endpoint.id]


async def test_the_cli_manages_endpoints_shows_deliveries_and_redelivers(
    stack: Stack, receiver: Receiver
) -> None:
    code, out, err = await stack.cli("webhooks", "endpoints", "create", "ftp://nowhere/", token=BOB)
    assert code == 2
    assert "endpoint.url" in err
    code, out, err = await stack.cli(
        "webhooks",
        "endpoints",
        "create",
        receiver.url("/cli"),
        "--on",
        "terminal",
        "--json",
        token=BOB,
    )
    assert code == 0, err
    created = json.loads(out)
    assert created["secret"].startswith("whsec_")
    code, out, err = await stack.cli("webhooks", "endpoints", "list", token=BOB)
    assert code == 0, err
    assert created["endpoint"]["id"] in out
    code, out, err = await stack.cli(
        "submit",
        "cli hook",
        "--width=64",
        "--height=64",
        "--steps=2",
        "--webhook",
        receiver.url("/own"),
        "--webhook-events",
        "terminal",
        token=BOB,
    )
    assert code == 0, err
    job_id = out.strip()
    await receiver.wait_for(2)
    await _all_delivered(stack, job_id, BOB)
    code, out, err = await stack.cli("webhooks", "deliveries", "--job", job_id, "--json", token=BOB)
    assert code == 0, err
    deliveries = json.loads(out)["deliveries"]
    assert {d["state"] for d in deliveries} == {"WEBHOOK_DELIVERY_STATE_DELIVERED"}
    own = next(d for d in deliveries if not d.get("endpointId"))
    code, out, err = await stack.cli("webhooks", "redeliver", own["id"], token=BOB)
    assert code == 0, err
    assert "pending" in out
    calls = await receiver.wait_for(3)
    assert calls[-1].id == own["id"]
    code, out, err = await stack.cli("webhooks", "secret", token=BOB)
    assert code == 0, err
    calls[-1].verify(out.strip())
    code, rotated, err = await stack.cli("webhooks", "secret", "--rotate", token=BOB)
    assert code == 0, err
    assert rotated.strip().startswith("whsec_")
    assert rotated != out
    code, out, err = await stack.cli(
        "webhooks", "endpoints", "rotate", created["endpoint"]["id"], token=BOB
    )
    assert code == 0, err
    assert out.strip().startswith("whsec_")
    code, _, err = await stack.cli(
        "webhooks", "endpoints", "delete", created["endpoint"]["id"], token=BOB
    )
    assert code == 0, err
    code, _, err = await stack.cli(
        "webhooks", "endpoints", "delete", created["endpoint"]["id"], token=BOB
    )
    assert code == 5, err
