"""One POST to a webhook receiver, to an address checked first and pinned.

The host is resolved here, every address it resolves to is checked against the policy
(`darkroom.webhooks.addresses`), and the connection goes to the checked address itself,
with the URL's host in the `Host` header and in TLS (SNI and certificate check): a DNS
answer that changes between the check and the connection (rebinding) cannot redirect it.
Redirects are not followed (a 3xx is a failure), environment proxies are ignored,
connections are not kept alive (a kept one could carry another host's request), the whole
try is bounded by the timeout, and at most `BODY_LIMIT` bytes of the answer are read.
"""

from __future__ import annotations

import asyncio
import socket
from datetime import timedelta
from urllib.parse import urlsplit, urlunsplit

import httpx

from darkroom.webhooks.addresses import AddressPolicy, AddressRefused, IPAddress, literal
from darkroom.webhooks.deliveries import Outcome

BODY_LIMIT = 1_024


class Sender:
    """POSTs for one worker; `close` when done."""

    def __init__(self, policy: AddressPolicy, timeout: timedelta) -> None:
        self._policy = policy
        self._timeout = timeout.total_seconds()
        self._client = httpx.AsyncClient(
            follow_redirects=False,
            trust_env=False,
            timeout=self._timeout,
            limits=httpx.Limits(max_keepalive_connections=0),
        )

    async def close(self) -> None:
        await self._client.aclose()

    async def post(self, url: str, body: str, headers: dict[str, str]) -> Outcome:
        """POST `body` to `url`; how it went, never an exception (but cancellation)."""
        try:
            async with asyncio.timeout(self._timeout):
                return await self._post(url, body, headers)
        except TimeoutError:
            return Outcome(error=f"no answer within {self._timeout:g} s")
        except AddressRefused as exc:
            return Outcome(error=f"refused: {exc}")
        except (httpx.HTTPError, OSError) as exc:
            return Outcome(error=f"{type(exc).__name__}: {exc}"[:500])

    async def _post(self, url: str, body: str, headers: dict[str, str]) -> Outcome:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port or (443 if parts.scheme == "https" else 80)
        address = (await self.resolve(host, port))[0]
        shown = f"[{address}]" if address.version == 6 else str(address)
        pinned = urlunsplit(parts._replace(netloc=f"{shown}:{port}"))
        request = self._client.build_request(
            "POST",
            pinned,
            content=body.encode(),
            headers={**headers, "host": parts.netloc},
            extensions={"sni_hostname": host} if parts.scheme == "https" else {},
        )
        response = await self._client.send(request, stream=True)
        try:
            answer = bytearray()
            async for chunk in response.aiter_raw():
                answer += chunk
                if len(answer) >= BODY_LIMIT:
                    break
        finally:
            await response.aclose()
        text = bytes(answer[:BODY_LIMIT]).decode("utf-8", errors="replace")
        if response.is_redirect:
            location = response.headers.get("location", "")[:200]
            return Outcome(response.status_code, f"redirect to {location!r} not followed", text)
        return Outcome(response.status_code, "", text)

    async def resolve(self, host: str, port: int) -> list[IPAddress]:
        """Every address of `host`, each one checked (AddressRefused otherwise)."""
        address = literal(host)
        if address is not None:
            return self._policy.check(host, [address])
        try:
            found = await asyncio.get_running_loop().getaddrinfo(
                host, port, type=socket.SOCK_STREAM
            )
        except socket.gaierror as exc:
            raise AddressRefused(f"{host} does not resolve ({exc.strerror})") from exc
        addresses = list(dict.fromkeys(literal(str(info[4][0])) for info in found))
        return self._policy.check(host, [a for a in addresses if a is not None])
