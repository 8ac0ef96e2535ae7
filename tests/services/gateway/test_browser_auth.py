"""Browser sign-in: the session cookie's flags, CSRF refusal, origins, sign-out."""

from __future__ import annotations

import json
from datetime import timedelta

import websockets

from darkroom.services.gateway.app import start as start_gateway
from darkroom.services.gateway.session import COOKIE
from tests.services.gateway.conftest import FrontFactory, spec


async def test_sign_in_sets_a_strict_http_only_cookie(make_front: FrontFactory) -> None:
    front = await make_front(generator=False)
    async with front.http(None) as browser:
        refused = await browser.post("/v1/session", json={"token": "nobody"})
        assert refused.status_code == 401
        assert COOKIE not in refused.cookies
        form = await browser.post("/v1/session", data={"token": "alice-token"})
        assert form.status_code == 400  # forms cannot sign in (login CSRF)
        signed = await browser.post("/v1/session", json={"token": "alice-token"})
        assert signed.status_code == 200, signed.text
        cookie = signed.headers["set-cookie"].lower()
        assert "httponly" in cookie
        assert "samesite=strict" in cookie
        assert "secure" not in cookie  # plain HTTP on loopback
        csrf = signed.json()["csrf_token"]
        assert (await browser.get("/v1/session")).json() == {"signed_in": True, "csrf_token": csrf}
        # Reads work with the cookie alone; changes need the CSRF token too.
        assert (await browser.get("/v1/jobs")).status_code == 200
        forged = await browser.post("/v1/jobs", json=spec())
        assert forged.status_code == 403
        assert forged.json()["error"]["reason"] == "CSRF_TOKEN_MISSING"
        wrong = await browser.post("/v1/jobs", json=spec(), headers={"X-CSRF-Token": "guess"})
        assert wrong.status_code == 403
        other_site = await browser.post(
            "/v1/jobs",
            json=spec(),
            headers={"X-CSRF-Token": csrf, "Origin": "https://evil.example"},
        )
        assert other_site.status_code == 403
        assert other_site.json()["error"]["reason"] == "ORIGIN_MISMATCH"
        created = await browser.post(
            "/v1/jobs", json=spec(), headers={"X-CSRF-Token": csrf, "Origin": front.url}
        )
        assert created.status_code == 201, created.text
        # A tampered cookie is nobody's.
        browser.cookies.set(COOKIE, browser.cookies[COOKIE][:-2] + "xx", domain="127.0.0.1")
        assert (await browser.get("/v1/jobs")).status_code == 401


async def test_bearer_callers_need_no_csrf_and_sign_out_clears(make_front: FrontFactory) -> None:
    front = await make_front(generator=False)
    async with front.http() as bearer:
        assert (await bearer.post("/v1/jobs", json=spec())).status_code == 201
    async with front.http(None) as browser:
        csrf = (await browser.post("/v1/session", json={"token": "bob-token"})).json()["csrf_token"]
        assert (await browser.delete("/v1/session")).status_code == 403
        out = await browser.delete("/v1/session", headers={"X-CSRF-Token": csrf})
        assert out.status_code == 200
        assert (await browser.get("/v1/session")).json() == {"signed_in": False}
        assert (await browser.get("/v1/jobs")).status_code == 401


async def test_cookies_are_secure_behind_tls_and_sessions_outlive_a_restart(
    make_front: FrontFactory,
) -> None:
    front = await make_front(generator=False, gateway_secure_cookies=True)
    async with front.http(None) as browser:
        signed = await browser.post("/v1/session", json={"token": "alice-token"})
        assert "secure" in signed.headers["set-cookie"].lower()
        value = signed.cookies[COOKIE]
    # Another replica (same secret) accepts the cookie; one with another secret does not.
    other = await start_gateway(
        front.settings.model_copy(update={"gateway_session_secret": "another"}), "127.0.0.1:0"
    )
    try:
        async with front.http(None, cookies={COOKIE: value}) as same:
            assert (await same.get("/v1/jobs")).status_code == 200
        url = f"http://127.0.0.1:{other.port}"
        async with front.http(None, base_url=url, cookies={COOKIE: value}) as stranger:
            assert (await stranger.get("/v1/jobs")).status_code == 401
    finally:
        await other.stop(timedelta(seconds=1))


async def test_cors_is_off_unless_configured(make_front: FrontFactory) -> None:
    closed = await make_front(generator=False)
    preflight = {"Origin": "https://app.example", "Access-Control-Request-Method": "POST"}
    async with closed.http(None) as http:
        answer = await http.options("/v1/jobs", headers=preflight)
        assert "access-control-allow-origin" not in answer.headers
    opened = await make_front(generator=False, gateway_cors_origins=["https://app.example"])
    async with opened.http(None) as http:
        answer = await http.options("/v1/jobs", headers=preflight)
        assert answer.headers["access-control-allow-origin"] == "https://app.example"
        assert answer.headers["access-control-allow-credentials"] == "true"


async def test_a_page_of_another_site_cannot_watch_with_the_cookie(
    make_front: FrontFactory,
) -> None:
    front = await make_front(generator=False)
    async with front.http(None) as browser:
        await browser.post("/v1/session", json={"token": "alice-token"})
        cookie = f"{COOKIE}={browser.cookies[COOKIE]}"
        async with front.http() as bearer:
            job_id = (await bearer.post("/v1/jobs", json=spec())).json()["id"]
    url = f"ws://127.0.0.1:{front.gateway.port}/v1/jobs/{job_id}/ws"
    evil = {"Cookie": cookie, "Origin": "https://evil.example"}
    async with websockets.connect(url, additional_headers=evil) as ws:
        assert json.loads(await ws.recv())["error"]["code"] == "UNAUTHENTICATED"
        await ws.wait_closed()
        assert ws.close_code == 4401
    own = {"Cookie": cookie, "Origin": front.url}
    async with websockets.connect(url, additional_headers=own) as ws:
        await ws.send(json.dumps({"after_event_id": ""}))
        assert "snapshot" in json.loads(await ws.recv())
