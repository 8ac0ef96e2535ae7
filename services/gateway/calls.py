"""The gateway's one client of the Jobs and Events services, shared by every request.

Auth, validation and idempotency stay in the services and in our Python client; the
gateway only says whose call each one is. One `AsyncDarkroomClient` (one channel to each
service) serves every caller: an interceptor puts the token of the request being served,
held in a context variable, on each call it makes (a watch's reader task inherits it).
"""

from __future__ import annotations

import contextvars
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import grpc

from darkroom.config import Settings
from darkroom_client.aio import AsyncDarkroomClient

_token: contextvars.ContextVar[str] = contextvars.ContextVar("darkroom_gateway_token")


@contextmanager
def caller(token: str) -> Iterator[None]:
    """Make the calls inside this block (and the tasks they start) with `token`."""
    reset = _token.set(token)
    try:
        yield
    finally:
        _token.reset(reset)


def set_caller(token: str) -> None:
    """Make the rest of this task's calls with `token` (for handlers that stream)."""
    _token.set(token)


def _with_token(details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
    token = _token.get(None)
    if token is None:
        # A call made outside a request would go out as whoever the client was built as.
        raise RuntimeError("a gateway call was made without a caller")
    metadata = [(k, v) for k, v in (details.metadata or ()) if k != "authorization"]
    metadata.append(("authorization", f"Bearer {token}"))
    return grpc.aio.ClientCallDetails(
        details.method,
        details.timeout,
        grpc.aio.Metadata(*metadata),
        details.credentials,
        details.wait_for_ready,
    )


class _UnaryToken(grpc.aio.UnaryUnaryClientInterceptor):
    async def intercept_unary_unary(
        self, continuation: Any, client_call_details: grpc.aio.ClientCallDetails, request: Any
    ) -> Any:
        return await continuation(_with_token(client_call_details), request)


class _StreamToken(grpc.aio.UnaryStreamClientInterceptor):
    async def intercept_unary_stream(
        self, continuation: Any, client_call_details: grpc.aio.ClientCallDetails, request: Any
    ) -> Any:
        return await continuation(_with_token(client_call_details), request)


def _loopback_target(address: str) -> str:
    """Where to reach a service that listens on `address` from this machine."""
    host, _, port = address.rpartition(":")
    if host in {"", "0.0.0.0", "[::]"}:  # noqa: S104 - an address to connect to, not to bind
        return f"127.0.0.1:{port}"
    return address


def upstream(settings: Settings) -> AsyncDarkroomClient:
    """The client of the Jobs and Events services named by the gateway's settings."""
    return AsyncDarkroomClient(
        settings.gateway_jobs_target or _loopback_target(settings.jobs_address),
        settings.gateway_events_target or _loopback_target(settings.events_address),
        # Replaced on every call by the caller's own token (see `_with_token`).
        token="-",  # noqa: S106 - a placeholder, never sent
        # A channel files each interceptor under one kind only: one object per kind.
        interceptors=[_UnaryToken(), _StreamToken()],
    )
