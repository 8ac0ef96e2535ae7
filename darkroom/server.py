"""gRPC server bootstrap shared by the Jobs and Events services.

`create_server` builds and starts a server on an address (port 0 in tests) with health
checking, reflection and the `RequestGuard` interceptor, over TLS when a certificate is
set, and optionally a plaintext port that serves only `grpc.health.v1` (Kubernetes' gRPC
probes cannot speak TLS); `RunningServer.stop` shuts both down gracefully.

It refuses to start where a deployment would be open to anyone: on an address other than
loopback with the development token in the token table, or without TLS unless
`DARKROOM_ALLOW_INSECURE` says plaintext is wanted (a mesh or a private network).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import grpc
import structlog
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from darkroom.auth import holds_dev_token
from darkroom.config import Settings
from darkroom.rpc import RequestGuard

log = structlog.get_logger("darkroom.server")

MAX_MESSAGE_BYTES = 4 * 1024 * 1024
SERVER_OPTIONS: Sequence[tuple[str, int]] = (
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    # Keep idle streams alive through proxies, and let clients ping every 10 s or more.
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
    ("grpc.http2.max_pings_without_data", 0),
    # gRPC sets SO_REUSEPORT by default: a second server on a taken port would start
    # silently and the kernel would split connections between the two.
    ("grpc.so_reuseport", 0),
    # A burst of calls waits in gRPC core until the server's loop takes each one. Past
    # 1,000 waiting calls core drops new ones at random (3,000: all), and past 30 s in
    # wait it drops them too; either way the client sees a bare CANCELLED from a call no
    # handler saw (2,183 of 5,000 WatchJob calls opened at once). Let a burst wait its
    # turn instead: each caller's deadline bounds its wait.
    ("grpc.server.max_pending_requests", 50_000),
    ("grpc.server.max_pending_requests_hard_limit", 50_000),
    ("grpc.server_max_unrequested_time_in_server", 300),
)


class ListenError(OSError):
    """The server cannot listen on its address (the port is taken, or not ours to bind)."""


class ExposureError(ListenError):
    """The settings would open the server to anyone who can reach its address."""


@dataclass
class RunningServer:
    """A started server, the port it bound and its health servicer."""

    server: grpc.aio.Server
    port: int
    health: health.aio.HealthServicer
    service_names: Sequence[str]
    health_server: grpc.aio.Server | None = None
    health_port: int = 0
    tls: bool = False

    async def stop(self, grace: timedelta) -> None:
        """Report NOT_SERVING, then let in-flight calls finish for up to `grace`."""
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace.total_seconds())
        if self.health_server is not None:
            await self.health_server.stop(0)


def is_loopback(address: str) -> bool:
    """Whether `host:port` binds only this machine (`127.0.0.1`, `[::1]`, `localhost`)."""
    host = address.rpartition(":")[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name, or every interface ("", "[::]", "0.0.0.0")


def check_exposure(address: str, settings: Settings) -> None:
    """Refuse settings that would let anyone who reaches `address` in: the development
    token off loopback, or plaintext off loopback without `DARKROOM_ALLOW_INSECURE`."""
    if is_loopback(address):
        return
    if holds_dev_token(settings.auth_tokens):
        raise ExposureError(
            f"refusing to listen on {address}: DARKROOM_AUTH_TOKENS holds the published "
            "development token, which works only on loopback (127.0.0.1, [::1]); set "
            "DARKROOM_AUTH_TOKENS to tokens of your own (sha256:<digest> keys keep them "
            "out of your configuration)"
        )
    if not settings.tls_cert_file and not settings.allow_insecure:
        raise ExposureError(
            f"refusing to listen on {address} in plaintext: set DARKROOM_TLS_CERT_FILE and "
            "DARKROOM_TLS_KEY_FILE, or DARKROOM_ALLOW_INSECURE=true where something else "
            "encrypts the traffic (a service mesh, a private network)"
        )


def server_credentials(settings: Settings) -> grpc.ServerCredentials | None:
    """TLS from the certificate and key settings (mutual TLS when a client CA is set)."""
    if not settings.tls_cert_file and not settings.tls_key_file:
        if settings.tls_client_ca_file:
            raise ExposureError(
                "DARKROOM_TLS_CLIENT_CA_FILE needs DARKROOM_TLS_CERT_FILE and DARKROOM_TLS_KEY_FILE"
            )
        return None
    if not settings.tls_cert_file or not settings.tls_key_file:
        raise ExposureError("set both DARKROOM_TLS_CERT_FILE and DARKROOM_TLS_KEY_FILE, or neither")
    cert = _read("DARKROOM_TLS_CERT_FILE", settings.tls_cert_file)
    key = _read("DARKROOM_TLS_KEY_FILE", settings.tls_key_file)
    client_ca = (
        _read("DARKROOM_TLS_CLIENT_CA_FILE", settings.tls_client_ca_file)
        if settings.tls_client_ca_file
        else None
    )
    return grpc.ssl_server_credentials(
        [(key, cert)], root_certificates=client_ca, require_client_auth=client_ca is not None
    )


def _read(setting: str, path: str) -> bytes:
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ExposureError(f"{setting}: cannot read {path}: {exc.strerror}") from exc
    if b"-----BEGIN" not in data:
        raise ExposureError(f"{setting}: {path} holds no PEM block")
    return data


@dataclass(frozen=True)
class Listener:
    """Where and how a server listens, checked before anything else starts."""

    address: str
    credentials: grpc.ServerCredentials | None
    health_address: str = ""
    mutual_tls: bool = False


def prepare_listener(address: str, settings: Settings, *, health_address: str = "") -> Listener:
    """Check the settings for `address` (ExposureError names what to change) and load TLS."""
    check_exposure(address, settings)
    return Listener(
        address,
        server_credentials(settings),
        health_address,
        mutual_tls=bool(settings.tls_client_ca_file),
    )


async def create_server(
    listen: Listener, register: Callable[[grpc.aio.Server], Sequence[str]]
) -> RunningServer:
    """Start a server as `listen` says; `register` adds servicers and returns their names.

    With a health address, a second, plaintext server there answers `grpc.health.v1`
    only, from the same health state, for probes that cannot speak TLS.
    """
    address, credentials, health_address = listen.address, listen.credentials, listen.health_address
    # The guard keeps a request that does not parse from answering UNKNOWN with the
    # parser's exception text: it becomes INVALID_ARGUMENT like any other bad input.
    server = grpc.aio.server(options=list(SERVER_OPTIONS), interceptors=[RequestGuard()])
    service_names = list(register(server))
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        [*service_names, health.SERVICE_NAME, reflection.SERVICE_NAME], server
    )
    port = _bind(server, address, credentials)
    health_server, health_port = None, 0
    if health_address:
        health_server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, health_server)
        health_port = _bind(health_server, health_address, None)
    await server.start()
    if health_server is not None:
        await health_server.start()
    for name in ["", *service_names]:
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    log.info(
        "server_started",
        address=address,
        port=port,
        services=service_names,
        tls=credentials is not None,
        mutual_tls=listen.mutual_tls,
        **({"health_port": health_port} if health_server is not None else {}),
    )
    return RunningServer(
        server,
        port,
        health_servicer,
        service_names,
        health_server,
        health_port,
        tls=credentials is not None,
    )


def _bind(server: grpc.aio.Server, address: str, credentials: grpc.ServerCredentials | None) -> int:
    try:
        if credentials is None:
            port = server.add_insecure_port(address)
        else:
            port = server.add_secure_port(address, credentials)
    except RuntimeError as exc:  # grpc's way of saying the bind failed
        raise ListenError(_cannot_listen(address)) from exc
    if port == 0:
        raise ListenError(_cannot_listen(address))
    return port


def _cannot_listen(address: str) -> str:
    port = address.rpartition(":")[2]
    return (
        f"cannot listen on {address}: port {port} is in use (another Darkroom stack?) "
        "or the address is not on this machine"
    )
