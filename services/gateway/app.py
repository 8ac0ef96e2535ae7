"""Wiring of the gateway: one upstream client, the sessions, and uvicorn on our socket.

It follows the gRPC servers' exposure rules (`darkroom.server.check_exposure`): off
loopback it needs TLS (the same certificate settings) or `DARKROOM_ALLOW_INSECURE`, and
tokens other than the development one; it also needs a session secret there, so that its
replicas accept each other's cookies.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import socket
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import anyio
import structlog
import uvicorn

from darkroom.config import Settings
from darkroom.server import ExposureError, ListenError, check_exposure, is_loopback
from darkroom.services.gateway.calls import upstream
from darkroom.services.gateway.routes import application
from darkroom.services.gateway.session import Sessions
from darkroom.services.gateway.state import Gateway

log = structlog.get_logger("darkroom.gateway")


class _Server(uvicorn.Server):
    """uvicorn without its own signal handlers: the process's (darkroom.process) stop it."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def _listen(address: str) -> socket.socket:
    host, _, port = address.rpartition(":")
    host = host.strip("[]") or "0.0.0.0"  # noqa: S104 - "" means every interface, as for gRPC
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    # A restarted gateway takes its port back at once (TIME_WAIT), but never shares a
    # port that something listens on (no SO_REUSEPORT).
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, int(port)))
    except (OSError, ValueError) as exc:
        sock.close()
        raise ListenError(
            f"cannot listen on {address}: port {port} is in use or the address is not on "
            "this machine"
        ) from exc
    sock.listen(2048)
    sock.setblocking(False)
    return sock


def _storage_root(storage_url: str) -> Path | None:
    if storage_url.startswith("gs://"):
        return None
    return Path(storage_url.removeprefix("file://")).resolve()


@dataclass
class GatewayApp:
    """A running gateway."""

    server: uvicorn.Server
    serving: asyncio.Task[None]
    gateway: Gateway
    port: int
    tls: bool

    async def wait(self) -> None:
        """Until the server ends (it only does when stopped, or when it fails)."""
        await asyncio.shield(self.serving)

    async def stop(self, grace: timedelta) -> None:
        """End open event streams (browsers reconnect elsewhere), then stop serving."""
        self.gateway.shutdown.set()
        self.server.should_exit = True
        try:
            async with asyncio.timeout(grace.total_seconds() + 1):
                await asyncio.shield(self.serving)
        except TimeoutError:
            self.server.force_exit = True
            await self.serving
        await self.gateway.client.close()


async def start(settings: Settings, address: str | None = None) -> GatewayApp:
    """Start the gateway on `address` (default: `settings.gateway_address`)."""
    address = address or settings.gateway_address
    check_exposure(address, settings)
    secret = settings.gateway_session_secret
    if not secret:
        if not is_loopback(address):
            raise ExposureError(
                f"refusing to listen on {address} without DARKROOM_GATEWAY_SESSION_SECRET: "
                "every replica must sign sessions with the same secret"
            )
        secret = secrets.token_urlsafe(32)
        log.warning("gateway_session_secret_random", note="sessions end when it restarts")
    tls = bool(settings.tls_cert_file)
    if bool(settings.tls_cert_file) != bool(settings.tls_key_file) or (
        settings.tls_client_ca_file and not tls
    ):
        raise ExposureError(
            "set both DARKROOM_TLS_CERT_FILE and DARKROOM_TLS_KEY_FILE, or neither (and "
            "DARKROOM_TLS_CLIENT_CA_FILE only with them)"
        )
    secure = tls if settings.gateway_secure_cookies is None else settings.gateway_secure_cookies
    gateway = Gateway(
        client=upstream(settings),
        sessions=Sessions(
            secret,
            settings.gateway_session_ttl,
            secure=secure,
            allowed_origins=frozenset(settings.gateway_cors_origins),
        ),
        keepalive_s=settings.gateway_keepalive.total_seconds(),
        shutdown=anyio.Event(),
        storage_root=_storage_root(settings.storage_url),
    )
    sock = _listen(address)
    config = uvicorn.Config(
        application(gateway, settings.gateway_cors_origins),
        lifespan="off",
        log_config=None,
        access_log=False,
        ws="websockets-sansio",
        proxy_headers=False,
        server_header=False,
        timeout_graceful_shutdown=max(1, int(settings.shutdown_grace.total_seconds())),
        ssl_certfile=settings.tls_cert_file or None,
        ssl_keyfile=settings.tls_key_file or None,
        # As for the gRPC servers: with a client CA, callers must present a certificate.
        ssl_ca_certs=settings.tls_client_ca_file or None,
        ssl_cert_reqs=ssl.CERT_REQUIRED if settings.tls_client_ca_file else ssl.CERT_NONE,
    )
    server = _Server(config)
    serving = asyncio.create_task(server.serve(sockets=[sock]), name="darkroom-gateway")
    while not server.started:
        if serving.done():
            await serving  # raises what stopped it
            raise ListenError(f"the gateway on {address} ended while starting")
        await asyncio.sleep(0.01)
    port = sock.getsockname()[1]
    log.info("gateway_started", address=address, port=port, tls=tls)
    return GatewayApp(server, serving, gateway, port, tls)
