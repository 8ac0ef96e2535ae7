"""What every RPC handler shares: authentication, one log line, error mapping, metrics and
the server span of a trace, with requests that do not parse refused like any other invalid
input (`RequestGuard`)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeAlias, TypeVar

import grpc
import structlog
from grpc_status import rpc_status

from darkroom import metrics, tracing
from darkroom.auth import Authenticator
from darkroom.errors import (
    DarkroomError,
    FieldViolation,
    InternalError,
    InvalidArgumentError,
    to_status,
    translate,
)

log = structlog.get_logger("darkroom.rpc")

RequestT = TypeVar("RequestT")
ResponseT = TypeVar("ResponseT")
# Methods of this package are served by handlers wrapped in `unary` or `server_stream`.
PACKAGE = "darkroom.v1"


@dataclass(frozen=True)
class MalformedRequest:
    """What a method's request deserializer returns, instead of raising, for bytes that
    are not a valid message of its request type (see `RequestGuard`)."""

    type_name: str

    def error(self) -> InvalidArgumentError:
        """The INVALID_ARGUMENT a caller gets for it: the parser's own words stay here."""
        return InvalidArgumentError(
            f"the request is not a valid {self.type_name} message",
            [FieldViolation("request", f"is not a valid {self.type_name} message")],
        )


def _parsed(request: RequestT) -> RequestT:
    """`request`, or the INVALID_ARGUMENT for a request that did not parse."""
    if isinstance(request, MalformedRequest):
        raise request.error()
    return request


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
    """Wrap a unary handler `(self, request, context, owner)` of a Darkroom servicer: it
    runs only for an authenticated caller and a request that parsed."""

    def decorate(handler: Handler[RequestT, ResponseT]) -> Wrapped[RequestT, ResponseT]:
        @functools.wraps(handler)
        async def wrapper(
            self: Servicer, request: RequestT, context: grpc.aio.ServicerContext[Any, Any]
        ) -> ResponseT:
            if not tracing.enabled():
                return await call(self, request, context, None)
            metadata = context.invocation_metadata()
            with tracing.server_span(service_of(self), method, metadata) as span:
                return await call(self, request, context, span)

        async def call(
            self: Servicer,
            request: RequestT,
            context: grpc.aio.ServicerContext[Any, Any],
            span: tracing.Span | None,
        ) -> ResponseT:
            structlog.contextvars.clear_contextvars()
            structlog.contextvars.bind_contextvars(method=method)
            started = time.perf_counter()
            error: DarkroomError | None = None
            try:
                owner = self.authenticator.owner_for(context.invocation_metadata())
                structlog.contextvars.bind_contextvars(owner=owner)
                response = await handler(self, _parsed(request), context, owner)
            except Exception as exc:  # noqa: BLE001 - every failure becomes a status below
                error = to_error(exc, method)
            elapsed = time.perf_counter() - started
            elapsed_ms = round(elapsed * 1000, 3)
            code = grpc.StatusCode.OK if error is None else error.code
            if metrics.enabled():
                _count_unary(self, method, code.name, elapsed)
            if span is not None:
                tracing.set_code(span, code)
            if error is None:
                log.info("rpc", code="OK", duration_ms=elapsed_ms)
                return response
            log.info("rpc", code=error.code.name, reason=error.reason, duration_ms=elapsed_ms)
            await abort(context, error)
            raise AssertionError("abort returned")  # pragma: no cover - abort always raises

        return wrapper

    return decorate


StreamHandler = Callable[
    [Any, RequestT, grpc.aio.ServicerContext[Any, Any], str], AsyncGenerator[ResponseT, None]
]
StreamWrapped = Callable[[Any, RequestT, grpc.aio.ServicerContext[Any, Any]], Awaitable[None]]


def server_stream(
    method: str,
) -> Callable[[StreamHandler[RequestT, ResponseT]], StreamWrapped[RequestT]]:
    """Wrap a server-streaming handler `(self, request, context, owner)`: authenticate,
    refuse a request that did not parse, map errors to statuses, and log one line when
    the stream ends."""

    def decorate(handler: StreamHandler[RequestT, ResponseT]) -> StreamWrapped[RequestT]:
        # The wrapper writes each response itself rather than yielding it to gRPC: a
        # caller that cancels then interrupts our `write`, in our frame, and `aclosing`
        # ends the handler's generator (and its `finally`) at once. Yielded to gRPC, a
        # cancelled stream left the generators suspended until the garbage collector
        # found them, and a watcher that had left stayed registered until then.
        @functools.wraps(handler)
        async def wrapper(
            self: Servicer, request: RequestT, context: grpc.aio.ServicerContext[Any, Any]
        ) -> None:
            structlog.contextvars.clear_contextvars()
            structlog.contextvars.bind_contextvars(method=method)
            started = time.perf_counter()
            sent = 0
            error: DarkroomError | None = None
            outcome = "OK"
            counted = _StreamCount.open(self, method) if metrics.enabled() else None
            try:
                owner = self.authenticator.owner_for(context.invocation_metadata())
                structlog.contextvars.bind_contextvars(owner=owner)
                responses = handler(self, _parsed(request), context, owner)
                async with contextlib.aclosing(responses):
                    async for response in responses:
                        await context.write(response)
                        sent += 1
            except Exception as exc:  # noqa: BLE001 - every failure becomes a status below
                error = to_error(exc, method)
                outcome = error.code.name
            except asyncio.CancelledError:
                outcome = "CANCELLED"
                raise
            finally:
                elapsed = time.perf_counter() - started
                if counted is not None:
                    counted.close(outcome, sent, elapsed)
                log.info("rpc", code=outcome, messages=sent, duration_ms=round(elapsed * 1000, 3))
            if error is not None:
                await abort(context, error)

        return wrapper

    return decorate


_SERVICES: dict[type, str] = {}


def service_of(servicer: object) -> str:
    """The full name of the gRPC service `servicer` implements (`darkroom.v1.JobsService`),
    from the generated base class it extends."""
    kind = type(servicer)
    name = _SERVICES.get(kind)
    if name is None:
        bases = [c for c in kind.__mro__ if c.__module__.endswith("_pb2_grpc")]
        short = bases[0].__name__.removesuffix("Servicer") if bases else kind.__name__
        name = _SERVICES[kind] = f"{PACKAGE}.{short}"
    return name


def _count_unary(servicer: object, method: str, code: str, seconds: float) -> None:
    service = service_of(servicer)
    metrics.RPC_STARTED.labels(service, method, "unary").inc()
    metrics.RPC_HANDLED.labels(service, method, "unary", code).inc()
    metrics.RPC_SECONDS.labels(service, method, "unary").observe(seconds)


@dataclass
class _StreamCount:
    """A server stream's metrics: open while it runs, then handled with its outcome."""

    service: str
    method: str

    @classmethod
    def open(cls, servicer: object, method: str) -> _StreamCount:
        counted = cls(service_of(servicer), method)
        metrics.RPC_STARTED.labels(counted.service, method, "server_stream").inc()
        metrics.RPC_OPEN_STREAMS.labels(counted.service, method).inc()
        return counted

    def close(self, code: str, sent: int, seconds: float) -> None:
        metrics.RPC_OPEN_STREAMS.labels(self.service, self.method).dec()
        metrics.RPC_HANDLED.labels(self.service, self.method, "server_stream", code).inc()
        metrics.RPC_SECONDS.labels(self.service, self.method, "server_stream").observe(seconds)
        metrics.RPC_SENT.labels(self.service, self.method).inc(sent)


Behavior = Callable[..., Any]
# Generic only in the type stubs, not at run time.
MethodHandler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"
_FACTORIES: dict[tuple[bool, bool], tuple[str, Callable[..., MethodHandler]]] = {
    (False, False): ("unary_unary", grpc.unary_unary_rpc_method_handler),
    (False, True): ("unary_stream", grpc.unary_stream_rpc_method_handler),
    (True, False): ("stream_unary", grpc.stream_unary_rpc_method_handler),
    (True, True): ("stream_stream", grpc.stream_stream_rpc_method_handler),
}


class RequestGuard(grpc.aio.ServerInterceptor):
    """Makes every method's request deserializer return a `MalformedRequest` instead of
    raising: gRPC would answer UNKNOWN with the parser's exception text.

    Darkroom's handlers (`unary`, `server_stream`) authenticate first and then refuse the
    marker with INVALID_ARGUMENT, the order any other invalid request gets, so a caller
    without a valid token learns nothing about its request. The other services on the
    server (health, reflection) take no token; their handlers are wrapped to refuse it.
    """

    def __init__(self) -> None:
        # A method's handler is fixed once served: guard it once, not on every call.
        self._guarded: dict[str, tuple[MethodHandler, MethodHandler]] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[MethodHandler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> MethodHandler | None:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        cached = self._guarded.get(method)
        if cached is None or cached[0] is not handler:
            cached = self._guarded[method] = (handler, _guard(handler, method))
        return cached[1]


def _guard(handler: MethodHandler, method: str) -> MethodHandler:
    """`handler` with a deserializer that never raises, and for a method not Darkroom's
    a behavior that refuses what did not parse."""
    if handler.request_deserializer is None:
        return handler
    kind, factory = _FACTORIES[handler.request_streaming, handler.response_streaming]
    behavior: Behavior | None = getattr(handler, kind)
    if behavior is not None and not method.startswith(f"/{PACKAGE}."):
        behavior = _refusing(behavior, method, stream_request=handler.request_streaming)
    if behavior is None:
        return handler
    return factory(
        behavior,
        request_deserializer=_tolerant(handler.request_deserializer),
        response_serializer=handler.response_serializer,
    )


def _tolerant(deserialize: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
    """`deserialize`, returning a `MalformedRequest` where it would raise."""
    # Generated code passes the message class's bound `FromString`.
    descriptor = getattr(getattr(deserialize, "__self__", None), "DESCRIPTOR", None)
    type_name = getattr(descriptor, "full_name", "request")

    def parse(data: bytes) -> Any:
        try:
            return deserialize(data)
        except Exception:  # noqa: BLE001 - whatever the parser raises, these bytes are no message
            return MalformedRequest(type_name)

    return parse


def _refusing(behavior: Behavior, method: str, *, stream_request: bool) -> Behavior | None:
    """`behavior` that first ends the call with INVALID_ARGUMENT for a request that did
    not parse; None for a kind of handler gRPC would call differently (a plain function)."""

    async def refuse(context: grpc.aio.ServicerContext[Any, Any], request: Any) -> None:
        if isinstance(request, MalformedRequest):
            log.info("rpc", method=method, code="INVALID_ARGUMENT", reason="INVALID_ARGUMENT")
            await abort(context, request.error())

    async def checked(requests: AsyncIterator[Any], context: Any) -> AsyncIterator[Any]:
        async for request in requests:
            await refuse(context, request)
            yield request

    async def request_of(given: Any, context: Any) -> Any:
        if stream_request:
            return checked(given, context)
        await refuse(context, given)
        return given

    # gRPC tells a streaming handler that yields from one that awaits context.write.
    if inspect.isasyncgenfunction(behavior):

        async def generator(given: Any, context: Any) -> AsyncIterator[Any]:
            async for response in behavior(await request_of(given, context), context):
                yield response

        return generator
    if inspect.iscoroutinefunction(behavior):

        async def coroutine(given: Any, context: Any) -> Any:
            return await behavior(await request_of(given, context), context)

        return coroutine
    return None
