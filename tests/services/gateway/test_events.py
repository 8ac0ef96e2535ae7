"""A job's events over server-sent events and a WebSocket: ids, resume, restarts."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import pytest
import redis.asyncio
import websockets

from darkroom.v1 import events_service_pb2
from tests.clients.conftest import GatedPipeline
from tests.services.gateway.conftest import Front, FrontFactory, spec
from tests.services.gateway.sse import Reading, Sse, events


async def _submit(front: Front, http: httpx.AsyncClient, **fields: object) -> str:
    created = await http.post("/v1/jobs", json=spec("events", steps=6, **fields))
    assert created.status_code == 201, created.text
    job_id: str = created.json()["id"]
    return job_id


async def _read_to_end(
    http: httpx.AsyncClient, job_id: str, reading: Reading, headers: dict[str, str] | None = None
) -> Sse:
    async with http.stream("GET", f"/v1/jobs/{job_id}/events", headers=headers) as response:
        assert response.status_code == 200
        async for event in events(response, reading):
            if event.ends:
                return event
    raise AssertionError(f"the stream ended before the job: {[e.event for e in reading.events]}")


async def test_stream_headers_ids_keepalive_and_end(make_front: FrontFactory) -> None:
    pipeline = GatedPipeline(2)
    front = await make_front(pipeline)
    async with front.http() as http:
        job_id = await _submit(front, http)
        reading = Reading()
        async with http.stream("GET", f"/v1/jobs/{job_id}/events") as response:
            assert response.headers["content-type"].startswith("text/event-stream")
            assert response.headers["cache-control"] == "no-cache"
            assert response.headers["x-accel-buffering"] == "no"
            stream = events(response, reading)
            first = await anext(stream)
            assert first.retry is not None  # browsers reconnect soon
            await pipeline.wait_reached(2)
            # Held at a step: the idle stream keeps sending comments (every 0.2 s here).
            await asyncio.sleep(0.7)
            pipeline.release(2)
            async for event in stream:
                assert event.data["job_id"] == job_id
                # The SSE name is the event's kind, the id its event id.
                assert event.event in event.data
                if event.id is not None:
                    assert event.id == event.data["event_id"]
            # The stream ended by itself, after the terminal event.
        assert reading.comments >= 2
        kinds = [e.event for e in reading.events]
        assert kinds[-1] == "succeeded"
        # The worker may claim the job before the stream opens: then the snapshot covers
        # `started` (it shows the job RUNNING), and the log's event is not sent again.
        snapshot = reading.events[0].data["snapshot"]["job"]
        assert "started" in kinds or snapshot["state"] == "JOB_STATE_RUNNING"
        assert "progress" in kinds
        succeeded = reading.events[-1].data["succeeded"]["job"]
        assert succeeded["state"] == "JOB_STATE_SUCCEEDED"


def _key(event_id: str) -> tuple[int, int]:
    millis, _, sequence = event_id.partition("-")
    return int(millis), int(sequence)


async def test_resume_from_last_event_id_misses_and_repeats_nothing(
    make_front: FrontFactory,
) -> None:
    # Held at step 1 until both streams have their snapshot, so that what follows is
    # logged after both (a snapshot's row may show an older step than the log it covers).
    pipeline = GatedPipeline(1, 3)
    front = await make_front(pipeline)
    async with front.http() as http:
        job_id = await _submit(front, http)
        await pipeline.wait_reached(1)
        whole = Reading()
        watcher = asyncio.create_task(_read_to_end(http, job_id, whole))
        part = Reading()
        async with http.stream("GET", f"/v1/jobs/{job_id}/events") as response:
            async for event in events(response, part):
                if len(part.events) == 1:
                    async with asyncio.timeout(10):
                        while not whole.events:
                            await asyncio.sleep(0.01)
                    pipeline.release(1)
                if event.event == "progress" and event.data["progress"]["progress"]["step"] >= 3:
                    break
        last = part.ids[-1]
        rest = Reading()
        header_task = asyncio.create_task(
            _read_to_end(http, job_id, rest, headers={"Last-Event-ID": last})
        )
        await asyncio.sleep(0.2)
        pipeline.release(3)
        await header_task
        await watcher
        # The same events again, from the query parameter this time: nothing after the end.
        query = Reading()
        async with http.stream("GET", f"/v1/jobs/{job_id}/events?after={last}") as response:
            async for _ in events(response, query):
                pass
    assert rest.events
    assert rest.events[0].event != "snapshot"  # no gap, so no snapshot
    # Compared after what both first snapshots cover.
    cut = max(_key(r.events[0].id or "0-0") for r in (part, whole))
    after_cut = [i for i in part.ids + rest.ids if _key(i) > cut]
    assert after_cut == [i for i in whole.ids if _key(i) > cut]
    assert after_cut
    assert len(set(whole.ids)) == len(whole.ids)
    assert [e.id for e in query.events if e.event != "snapshot"] == rest.ids


async def test_stream_survives_an_events_restart(make_front: FrontFactory) -> None:
    pipeline = GatedPipeline(3)
    front = await make_front(pipeline)
    async with front.http() as http:
        job_id = await _submit(front, http)
        reading = Reading()
        task = asyncio.create_task(_read_to_end(http, job_id, reading))
        await pipeline.wait_reached(3)
        await asyncio.sleep(0.1)
        await front.stack.restart_events()
        pipeline.release(3)
        end = await asyncio.wait_for(task, 30)
    assert end.event == "succeeded"
    assert len(set(reading.ids)) == len(reading.ids)
    assert reading.ids == sorted(reading.ids, key=lambda i: tuple(map(int, i.split("-"))))


async def test_a_gateway_restart_ends_the_stream_and_the_resume_goes_on(
    make_front: FrontFactory,
) -> None:
    pipeline = GatedPipeline(1, 3)
    front = await make_front(pipeline)
    async with front.http() as http:
        job_id = await _submit(front, http)
        first = Reading()
        async with http.stream("GET", f"/v1/jobs/{job_id}/events") as response:
            stream = events(response, first)
            await anext(stream)  # its snapshot; what follows is logged after it
            pipeline.release(1)
            await pipeline.wait_reached(3)
            async for _ in stream:
                if first.ids:
                    break
            started = time.monotonic()
            await front.restart()
            # The stopping gateway ended the stream cleanly, at once (not when its grace
            # period ran out), and the browser reconnects.
            async for _ in stream:
                pass
            assert time.monotonic() - started < 1
        assert not any(e.ends for e in first.events)
        rest = Reading()
        headers = {"Last-Event-ID": first.ids[-1]}
        task = asyncio.create_task(_read_to_end(http, job_id, rest, headers=headers))
        await asyncio.sleep(0.2)
        pipeline.release(3)
        end = await asyncio.wait_for(task, 30)
    assert end.event == "succeeded"
    assert not set(first.ids) & set(rest.ids)


async def test_an_event_without_id_has_no_id_line(
    make_front: FrontFactory, redis_client: redis.asyncio.Redis
) -> None:
    front = await make_front()
    async with front.http() as http:
        job_id = await _submit(front, http)
        await _read_to_end(http, job_id, Reading())
        # The event log is gone (Redis lost it): the row answers, with no resume token,
        # and the browser's resume point must stay where it was.
        keys = front.stack.settings.keys
        await redis_client.delete(keys.events(job_id), keys.ended(job_id))
        reading = Reading()
        end = await _read_to_end(http, job_id, reading, headers={"Last-Event-ID": "1-0"})
    assert end.event == "snapshot"
    assert "event_id" not in end.data  # proto JSON leaves the empty id out
    assert end.id is None, end


async def test_websocket_resumes_from_its_first_message(make_front: FrontFactory) -> None:
    pipeline = GatedPipeline(1, 3)
    front = await make_front(pipeline)
    async with front.http() as http:
        job_id = await _submit(front, http)
    url = f"ws://127.0.0.1:{front.gateway.port}/v1/jobs/{job_id}/ws"
    auth = {"Authorization": "Bearer alice-token"}
    first: list[dict[str, object]] = []
    async with websockets.connect(url, additional_headers=auth) as ws:
        await ws.send(json.dumps({"after_event_id": ""}))
        first.append(json.loads(await ws.recv()))  # its snapshot
        pipeline.release(1)
        await pipeline.wait_reached(3)
        async for message in ws:
            event = json.loads(message)
            first.append(event)
            if "progress" in event:
                break
    last = str(first[-1]["event_id"])
    rest: list[dict[str, object]] = []
    async with websockets.connect(url, additional_headers=auth) as ws:
        await ws.send(json.dumps({"after_event_id": last}))
        await asyncio.sleep(0.1)
        pipeline.release(3)
        async for message in ws:  # the server closes it after the terminal event
            rest.append(json.loads(message))
        assert ws.close_code == 1000
    assert "snapshot" in first[0]
    assert "succeeded" in rest[-1]
    assert "snapshot" not in rest[0]
    ids = [e["event_id"] for e in first[1:] + rest]
    assert len(set(ids)) == len(ids)
    assert all(str(e["event_id"]) > last or len(str(e["event_id"])) > len(last) for e in rest)


async def test_websocket_refuses_strangers(make_front: FrontFactory) -> None:
    front = await make_front(generator=False)
    async with front.http() as http:
        job_id = await _submit(front, http)
    url = f"ws://127.0.0.1:{front.gateway.port}/v1/jobs/{job_id}/ws"
    async with websockets.connect(url) as ws:
        body = json.loads(await ws.recv())
        assert body["error"]["code"] == "UNAUTHENTICATED"
        await ws.wait_closed()
        assert ws.close_code == 4401
    bob = {"Authorization": "Bearer bob-token"}
    async with websockets.connect(url, additional_headers=bob) as ws:
        await ws.send(json.dumps({"after_event_id": ""}))
        body = json.loads(await ws.recv())
        assert body["error"]["code"] == "NOT_FOUND"
        await ws.wait_closed()
        assert ws.close_code == 4404


async def test_a_stopping_gateway_closes_websockets_with_service_restart(
    make_front: FrontFactory,
) -> None:
    pipeline = GatedPipeline(3)
    front = await make_front(pipeline)
    async with front.http() as http:
        job_id = await _submit(front, http)
    url = f"ws://127.0.0.1:{front.gateway.port}/v1/jobs/{job_id}/ws"
    auth = {"Authorization": "Bearer alice-token"}
    async with websockets.connect(url, additional_headers=auth) as ws:
        await ws.send(json.dumps({"after_event_id": ""}))
        await pipeline.wait_reached(3)
        await ws.recv()
        await front.restart()
        await ws.wait_closed()
        assert ws.close_code == 1012  # come back: the job goes on
    async with websockets.connect(url, additional_headers=auth) as ws:
        await ws.send(json.dumps({"after_event_id": ""}))
        pipeline.release(3)
        messages = [json.loads(message) async for message in ws]
        assert ws.close_code == 1000
    assert "succeeded" in messages[-1]


@pytest.mark.skipif(
    "position" not in events_service_pb2.JobEvent.DESCRIPTOR.fields_by_name,
    reason="the contract has no position events yet",
)
async def test_kinds_the_gateway_does_not_know_pass_through(make_front: FrontFactory) -> None:
    # `position` (queue status, live only) is named nowhere in the gateway: it arrives as
    # the contract says, under its kind's name, and without an id (it is no resume point).
    front = await make_front(generator=False)
    async with front.http() as http:
        job_id = await _submit(front, http)
        assert "queue" in (await http.get(f"/v1/jobs/{job_id}")).json()
        reading = Reading()
        async with http.stream("GET", f"/v1/jobs/{job_id}/events") as response:
            async with asyncio.timeout(10):
                async for event in events(response, reading):
                    if event.event == "position":
                        break
    position = reading.events[-1]
    assert position.id is None
    assert position.data["position"]["queue"]["reason"] == "WAIT_REASON_NO_WORKER"
