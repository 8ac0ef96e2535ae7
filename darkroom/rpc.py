"""What every RPC handler shares: authentication, one log line, and error mapping."""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Protocol, TypeVar

import grpc
import structlog
from grpc_status import rpc_status

from darkroom.auth import Authenticator
from darkroom.errors import DarkroomError, InternalError, to_status, translate

log = structlog.get_logger("darkroom.rpc")

RequestT = TypeVar("RequestT")
ResponseT = TypeVar("ResponseT")


class Servicer(Protocol):
    authenticator: Authenticator


Handler = Callable[[Any, RequestT, grpc.aio.ServicerContext[Any, Any], str], Awaitable[ResponseT]]
Wrapped = Callable[[Any, RequestT, grpc.aio.ServicerContext[Any, Any]], Awaitable[ResponseT]]


async def abort(context: grpc.aio.ServicerContext[Any, Any], error: DarkroomError) -> None:
    """End the call with `error` as a rich `google.rpc.Status`."""
    await context.abort_with_status(rpc_status.to_status(to_status(error)))


def to_error(exc: BaseException, method: str) -> DarkroomError:
    """Our error for any exception; unexpected ones are logged with their traceback."""
    error = translate(exc)
    if error is None:
        log.exception("rpc_unexpected_error", method=method)
        return InternalError("internal error")
    return error


def unary(method: str) -> Callable[[Handler[RequestT, ResponseT]], Wrapped[RequestT, ResponseT]]:
    """Wrap a unary handler `(self, request, context, owner)` of a Darkroom servicer."""

    def decorate(handler: Handler[RequestT, ResponseT]) -> Wrapped[RequestT, ResponseT]:
        @functools.wraps(handler)
        async def wrapper(
            self: Servicer, request: RequestT, context: grpc.aio.ServicerContext[Any, Any]
        ) -> ResponseT:
            structlog.contextvars.clear_contextvars()
            structlog.contextvars.bind_contextvars(method=method)
            started = time.perf_counter()
            error: DarkroomError | None = None
            try:
                owner = self.authenticator.owner_for(context.invocation_metadata())
                structlog.contextvars.bind_contextvars(owner=owner)
                response = await handler(self, request, context, owner)
            except Exception as exc:  # noqa: BLE001 - every failure becomes a status below
                error = to_error(exc, method)
            elapsed_ms = round((time.perf_counter() - started) * 1000, 3)
            if error is None:
                log.info("rpc", code="OK", duration_ms=elapsed_ms)
                return response
            log.info("rpc", code=error.code.name, reason=error.reason, duration_ms=elapsed_ms)
            await abort(context, error)
            raise AssertionError("abort returned")  # pragma: no cover - abort always raises

        return wrapper

    return decorate


StreamHandler = Callable[
    [Any, RequestT, grpc.aio.ServicerContext[Any, Any], str], AsyncIterator[ResponseT]
]
StreamWrapped = Callable[
    [Any, RequestT, grpc.aio.ServicerContext[Any, Any]], AsyncIterator[ResponseT]
]


def server_stream(
    method: str,
) -> Callable[[StreamHandler[RequestT, ResponseT]], StreamWrapped[RequestT, ResponseT]]:
    """Wrap a server-streaming handler `(self, request, context, owner)`: authenticate,
    map errors to statuses, and log one line when the stream ends."""

    def decorate(handler: StreamHandler[RequestT, ResponseT]) -> StreamWrapped[RequestT, ResponseT]:
        @functools.wraps(handler)
        async def wrapper(
            self: Servicer, request: RequestT, context: grpc.aio.ServicerContext[Any, Any]
        ) -> AsyncIterator[ResponseT]:
            structlog.contextvars.clear_contextvars()
            structlog.contextvars.bind_contextvars(method=method)
            started = time.perf_counter()
            sent = 0
            error: DarkroomError | None = None
            outcome = "OK"
            try:
                owner = self.authenticator.owner_for(context.invocation_metadata())
                structlog.contextvars.bind_contextvars(owner=owner)
                async for response in handler(self, request, context, owner):
                    yield response
                    sent += 1
            except Exception as exc:  # noqa: BLE001 - every failure becomes a status below
                error = to_error(exc, method)
                outcome = error.code.name
            except asyncio.CancelledError:
                outcome = "CANCELLED"
                raise
            finally:
                elapsed_ms = round((time.perf_counter() - started) * 1000, 3)
                log.info("rpc", code=outcome, messages=sent, duration_ms=elapsed_ms)
            if error is not None:
                await abort(context, error)

        return wrapper

    return decorate
