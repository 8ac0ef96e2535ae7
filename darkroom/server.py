"""gRPC server bootstrap shared by the Jobs and Events services.

`create_server` builds and starts a server on an address (port 0 in tests) with health
checking, reflection and the `RequestGuard` interceptor; `RunningServer.stop` shuts it
down gracefully.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta

import grpc
import structlog
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

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


@dataclass
class RunningServer:
    """A started server, the port it bound and its health servicer."""

    server: grpc.aio.Server
    port: int
    health: health.aio.HealthServicer
    service_names: Sequence[str]

    async def stop(self, grace: timedelta) -> None:
        """Report NOT_SERVING, then let in-flight calls finish for up to `grace`."""
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace.total_seconds())


async def create_server(
    address: str, register: Callable[[grpc.aio.Server], Sequence[str]]
) -> RunningServer:
    """Start a server on `address`; `register` adds servicers and returns their names."""
    # The guard keeps a request that does not parse from answering UNKNOWN with the
    # parser's exception text: it becomes INVALID_ARGUMENT like any other bad input.
    server = grpc.aio.server(options=list(SERVER_OPTIONS), interceptors=[RequestGuard()])
    service_names = list(register(server))
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        [*service_names, health.SERVICE_NAME, reflection.SERVICE_NAME], server
    )
    try:
        port = server.add_insecure_port(address)
    except RuntimeError as exc:  # grpc's way of saying the bind failed
        raise ListenError(_cannot_listen(address)) from exc
    if port == 0:
        raise ListenError(_cannot_listen(address))
    await server.start()
    for name in ["", *service_names]:
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    log.info("server_started", address=address, port=port, services=service_names)
    return RunningServer(server, port, health_servicer, service_names)


def _cannot_listen(address: str) -> str:
    port = address.rpartition(":")[2]
    return (
        f"cannot listen on {address}: port {port} is in use (another Darkroom stack?) "
        "or the address is not on this machine"
    )
