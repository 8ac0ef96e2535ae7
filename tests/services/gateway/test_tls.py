"""The gateway over TLS: its own certificate (the servers' settings), Secure cookies."""

from __future__ import annotations

import ssl

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
