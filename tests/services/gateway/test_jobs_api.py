"""REST/JSON through the gateway: create, get, list, cancel, errors and idempotency."""

from __future__ import annotations

import asyncio
import uuid

from tests.clients.conftest import GatedPipeline
from tests.services.gateway.conftest import FrontFactory, spec


async def test_create_get_list_and_finish(make_front: FrontFactory) -> None:
    front = await make_front()
    async with front.http() as http:
        created = await http.post("/v1/jobs", json=spec("a red fox", seed=7))
        assert created.status_code == 201, created.text
        job = created.json()
        assert job["state"] == "JOB_STATE_QUEUED"
        assert job["spec"]["prompt"] == "a red fox"
        assert created.headers["location"] == f"/v1/jobs/{job['id']}"
        assert created.headers["idempotency-key"] == job["request_id"]
        async with asyncio.timeout(20):
            while (got := (await http.get(f"/v1/jobs/{job['id']}")).json())[
                "state"
            ] != "JOB_STATE_SUCCEEDED":
                await asyncio.sleep(0.05)
        assert got["outputs"][0]["content_type"] == "image/png"
        listed = (await http.get("/v1/jobs", params={"state": "succeeded"})).json()
        assert job["id"] in [j["id"] for j in listed["jobs"]]
        queued = (await http.get("/v1/jobs", params={"state": "queued"})).json()
        assert job["id"] not in [j["id"] for j in queued.get("jobs", [])]


async def test_list_pages_with_the_page_token(make_front: FrontFactory) -> None:
    front = await make_front(generator=False)
    async with front.http("bob-token") as http:
        ids = []
        for number in range(3):
            created = await http.post("/v1/jobs", json=spec(f"page {number}"))
            ids.append(created.json()["id"])
        first = (await http.get("/v1/jobs", params={"page_size": 2})).json()
        assert len(first["jobs"]) == 2
        second = (
            await http.get(
                "/v1/jobs", params={"page_size": 2, "page_token": first["next_page_token"]}
            )
        ).json()
        seen = [j["id"] for j in first["jobs"] + second["jobs"]]
        assert set(ids) <= set(seen)
        assert len(seen) == len(set(seen))


async def test_idempotency_key_replays_the_first_job(make_front: FrontFactory) -> None:
    front = await make_front(generator=False)
    async with front.http() as http:
        key = str(uuid.uuid4())
        headers = {"Idempotency-Key": key}
        first = await http.post("/v1/jobs", json=spec("once"), headers=headers)
        again = await http.post("/v1/jobs", json=spec("once"), headers=headers)
        assert first.status_code == again.status_code == 201, first.text
        assert first.json()["id"] == again.json()["id"]
        assert first.json()["request_id"] == key
        assert again.headers["idempotency-key"] == key
        # Any string is a key: it names one request id for good.
        words = {"Idempotency-Key": f"order-{key}"}
        named = await http.post("/v1/jobs", json=spec("once"), headers=words)
        assert named.status_code == 201, named.text
        assert named.json()["id"] != first.json()["id"]
        named_again = await http.post("/v1/jobs", json=spec("once"), headers=words)
        assert named_again.json()["id"] == named.json()["id"]
        other = await http.post("/v1/jobs", json=spec("twice"), headers=headers)
        assert other.status_code == 409, other.text
        assert other.json()["error"]["code"] == "ALREADY_EXISTS"
        fresh = await http.post("/v1/jobs", json=spec("once"))
        assert fresh.json()["id"] != first.json()["id"]


async def test_every_field_violation_comes_back(make_front: FrontFactory) -> None:
    front = await make_front(generator=False)
    async with front.http() as http:
        bad = await http.post(
            "/v1/jobs", json={"spec": {"prompt": "", "width": 65, "steps": 100000}}
        )
        assert bad.status_code == 400
        error = bad.json()["error"]
        assert error["code"] == "INVALID_ARGUMENT"
        assert error["status"] == 400
        assert error["reason"]
        fields = [v["field"] for v in error["field_violations"]]
        assert {"spec.prompt", "spec.width", "spec.steps"} <= set(fields), error
        typed = await http.post(
            "/v1/jobs", json={"spec": {"prompt": "x", "width": "wide", "colour": 1}, "x": 1}
        )
        assert typed.status_code == 400
        fields = [v["field"] for v in typed.json()["error"]["field_violations"]]
        assert fields == ["x", "spec.width", "spec.colour"]
        not_json = await http.post("/v1/jobs", content=b"{nope")
        assert not_json.status_code == 400
        assert not_json.json()["error"]["code"] == "INVALID_ARGUMENT"
        state = await http.get("/v1/jobs", params={"state": "sleeping"})
        assert state.status_code == 400
        assert state.json()["error"]["field_violations"][0]["field"] == "state"


async def test_auth_and_ownership(make_front: FrontFactory) -> None:
    front = await make_front(generator=False)
    async with front.http(None) as anonymous, front.http() as alice, front.http("bob-token") as bob:
        missing = await anonymous.post("/v1/jobs", json=spec())
        assert missing.status_code == 401
        assert missing.json()["error"]["code"] == "UNAUTHENTICATED"
        wrong = await alice.get("/v1/jobs", headers={"Authorization": "Bearer nobody"})
        assert wrong.status_code == 401
        job = (await alice.post("/v1/jobs", json=spec("mine"))).json()
        for path in (f"/v1/jobs/{job['id']}", f"/v1/jobs/{job['id']}/events"):
            stranger = await bob.get(path)
            assert stranger.status_code == 404, path
            assert stranger.json()["error"]["code"] == "NOT_FOUND"
        assert (await bob.post(f"/v1/jobs/{job['id']}:cancel")).status_code == 404
        assert job["id"] not in [
            j["id"] for j in (await bob.get("/v1/jobs")).json().get("jobs", [])
        ]


async def test_cancel(make_front: FrontFactory) -> None:
    pipeline = GatedPipeline(2)
    front = await make_front(pipeline)
    async with front.http() as http:
        job = (await http.post("/v1/jobs", json=spec("stop me"))).json()
        await pipeline.wait_reached(2)
        cancelled = await http.post(f"/v1/jobs/{job['id']}:cancel")
        assert cancelled.status_code == 200, cancelled.text
        assert cancelled.json()["cancel_requested"] is True
        async with asyncio.timeout(20):
            while (await http.get(f"/v1/jobs/{job['id']}")).json()[
                "state"
            ] != "JOB_STATE_CANCELLED":
                await asyncio.sleep(0.05)
        again = await http.post(f"/v1/jobs/{job['id']}:cancel")
        assert again.status_code == 400
        assert again.json()["error"]["code"] == "FAILED_PRECONDITION"
