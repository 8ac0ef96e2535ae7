"""The gateway over TLS: its own certificate (the servers' settings), Secure cookies."""

from __future__ import annotations

import ssl

import httpx
import pytest

from tests.clients.test_tls import Pki, pki  # noqa: F401 - the fixture, used by name
from tests.services.gateway.conftest import FrontFactory


async def test_https_and_secure_cookies(make_front: FrontFactory, pki: Pki) -> None:  # noqa: F811
    front = await make_front(
        generator=False, tls_cert_file=str(pki.server_cert), tls_key_file=str(pki.server_key)
    )
    assert front.gateway.tls
    trust = ssl.create_default_context(cafile=str(pki.ca))
    url = f"https://127.0.0.1:{front.gateway.port}"
    async with front.http(None, base_url=url, verify=trust) as browser:
        signed = await browser.post("/v1/session", json={"token": "alice-token"})
        assert signed.status_code == 200, signed.text
        cookie = signed.headers["set-cookie"].lower()
        assert "secure" in cookie
        assert "httponly" in cookie
        assert (await browser.get("/v1/jobs")).status_code == 200


async def test_with_a_client_ca_callers_need_a_certificate(
    make_front: FrontFactory,
    pki: Pki,  # noqa: F811
) -> None:
    front = await make_front(
        generator=False,
        tls_cert_file=str(pki.server_cert),
        tls_key_file=str(pki.server_key),
        tls_client_ca_file=str(pki.ca),
    )
    url = f"https://127.0.0.1:{front.gateway.port}"
    bare = ssl.create_default_context(cafile=str(pki.ca))
    async with front.http(base_url=url, verify=bare) as http:
        with pytest.raises((httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError)):
            await http.get("/v1/jobs")
    with_cert = ssl.create_default_context(cafile=str(pki.ca))
    with_cert.load_cert_chain(str(pki.client_cert), str(pki.client_key))
    async with front.http(base_url=url, verify=with_cert) as http:
        assert (await http.get("/v1/jobs")).status_code == 200
