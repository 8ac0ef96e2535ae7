"""OpenTelemetry traces: off unless `DARKROOM_TRACES_ENDPOINT` names an OTLP collector.

When on, every RPC is a server span (`server_span`, opened by `rpc.unary`), SQL statements
and Redis commands are client spans within it (`_RedisCalls`), and each generator attempt
is a span of its own that *links* to the SubmitJob span that recorded the job. The link's
context travels in the job row (`traceparent`, written by the submit's insert): the queue
message names the row, and the reconciler re-enqueues from the row after Redis lost it, so
an attempt links to its submit however its message came to be. WatchJob is not one span
for the whole life of its stream: its opening is a short span of its own, and its end a
second one (`StreamSpans`).

Off, nothing is instrumented and every function here returns at once: `traceparent()` is
None, spans are OpenTelemetry's no-op ones, and log lines carry no ids.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator, Mapping, MutableMapping
from typing import Any

import grpc
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Link, NonRecordingSpan, Span, SpanKind, Status, StatusCode, Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

__all__ = [
    "Span",
    "StreamSpans",
    "Tracing",
    "add_log_ids",
    "attempt_span",
    "configure",
    "enabled",
    "linked",
    "server_span",
    "set_code",
    "shutdown",
    "span",
    "traceparent",
]

_PROPAGATOR = TraceContextTextMapPropagator()
_PROPAGATED = frozenset(_PROPAGATOR.fields)


class Tracing:
    """The tracer provider of a process and what it instrumented (for `shutdown`)."""

    def __init__(self, provider: Any, instrumentors: list[Any]) -> None:
        self.provider = provider
        self.tracer: Tracer = provider.get_tracer("darkroom")
        self.instrumentors = instrumentors


_current: Tracing | None = None


def enabled() -> bool:
    return _current is not None


def configure(
    service_name: str,
    endpoint: str,
    *,
    sample_ratio: float = 1.0,
    exporter: Any = None,
    simple: bool = False,
) -> Tracing | None:
    """Trace this process as `service_name`, exporting to the OTLP/gRPC `endpoint` (or to
    `exporter`, e.g. an in-memory one in tests; `simple`: export each span as it ends
    rather than in batches). Call before any engine or server is created. None when
    neither names a destination: tracing stays off."""
    global _current  # noqa: PLW0603 - one provider per process
    if not endpoint and exporter is None:
        return None
    # Imported only when on: a process without traces loads none of the SDK.
    from opentelemetry.instrumentation.sqlalchemy import SQLAlchemyInstrumentor  # noqa: PLC0415
    from opentelemetry.sdk.resources import Resource  # noqa: PLC0415
    from opentelemetry.sdk.trace import TracerProvider  # noqa: PLC0415
    from opentelemetry.sdk.trace.export import (  # noqa: PLC0415
        BatchSpanProcessor,
        SimpleSpanProcessor,
    )
    from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased  # noqa: PLC0415

    shutdown()
    if exporter is None:
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (  # noqa: PLC0415
            OTLPSpanExporter,
        )

        exporter = OTLPSpanExporter(endpoint=endpoint)
    provider = TracerProvider(
        resource=Resource.create({"service.name": service_name}),
        sampler=ParentBased(_follow_links(TraceIdRatioBased(sample_ratio))),
    )
    processor = SimpleSpanProcessor(exporter) if simple else BatchSpanProcessor(exporter)
    provider.add_span_processor(processor)
    instrumentors: list[Any] = [SQLAlchemyInstrumentor(), _RedisCalls(provider.get_tracer("redis"))]
    for instrumentor in instrumentors:
        # The SQLAlchemy instrumentation declares < 2.1 but works on 2.1's event API (its
        # spans are checked by tests/observability).
        instrumentor.instrument(tracer_provider=provider, skip_dep_check=True)
    _current = Tracing(provider, instrumentors)
    return _current


class _RedisCalls:
    """Redis commands and pipelines as client spans, within a recorded span only.

    In place of opentelemetry-instrumentation-redis, which formats every command of a
    pipeline into its statement before it knows whether the span is recorded: with one
    submit batch's announce (dozens of commands) that cost 5% of the Jobs server's CPU at a
    10% sample ratio. Here a call outside a recorded span (a generator's idle poll, an
    unsampled submit) costs one `is_recording()`, and makes no trace of its own."""

    def __init__(self, tracer: Tracer) -> None:
        self._tracer = tracer
        self._originals: tuple[Any, Any] | None = None

    def instrument(self, **_: Any) -> None:
        from redis.asyncio.client import Pipeline, Redis  # noqa: PLC0415

        tracer = self._tracer
        command: Any = Redis.execute_command
        execute: Any = Pipeline.execute
        self._originals = (command, execute)

        async def traced_command(client: Any, *args: Any, **options: Any) -> Any:
            if not trace.get_current_span().is_recording():
                return await command(client, *args, **options)
            name = str(args[0]) if args else "redis"
            attributes = {"db.system": "redis", "db.operation.name": name}
            with tracer.start_as_current_span(name, kind=SpanKind.CLIENT, attributes=attributes):
                return await command(client, *args, **options)

        async def traced_execute(pipeline: Any, raise_on_error: bool = True) -> Any:
            if not trace.get_current_span().is_recording():
                return await execute(pipeline, raise_on_error)
            stack = pipeline.command_stack
            attributes: dict[str, str | int] = {
                "db.system": "redis",
                "db.operation.name": " ".join(str(args[0]) for args, _ in stack[:10]),
                "db.operation.batch.size": len(stack),
            }
            with tracer.start_as_current_span(
                "PIPELINE", kind=SpanKind.CLIENT, attributes=attributes
            ):
                return await execute(pipeline, raise_on_error)

        Redis.execute_command = traced_command  # type: ignore[method-assign,assignment]
        Pipeline.execute = traced_execute  # type: ignore[method-assign,assignment]

    def uninstrument(self) -> None:
        if self._originals is None:
            return
        from redis.asyncio.client import Pipeline, Redis  # noqa: PLC0415

        Redis.execute_command, Pipeline.execute = self._originals  # type: ignore[method-assign]
        self._originals = None


def _follow_links(ratio: Any) -> Any:
    """The sampler of new traces: one linked to a sampled span is sampled too (an attempt
    of a sampled submit, a batch insert of one), others by `ratio`."""
    from opentelemetry.sdk.trace.sampling import (  # noqa: PLC0415
        Decision,
        Sampler,
        SamplingResult,
    )

    class FollowLinks(Sampler):
        def should_sample(  # noqa: PLR0917 - the SDK's signature
            self,
            parent_context: Any,
            trace_id: int,
            name: str,
            kind: Any = None,
            attributes: Any = None,
            links: Any = None,
            trace_state: Any = None,
        ) -> SamplingResult:
            if links and any(link.context.trace_flags.sampled for link in links):
                return SamplingResult(Decision.RECORD_AND_SAMPLE, attributes)
            result: SamplingResult = ratio.should_sample(
                parent_context, trace_id, name, kind, attributes, links, trace_state
            )
            return result

        def get_description(self) -> str:
            return f"FollowLinks{{{ratio.get_description()}}}"

    return FollowLinks()


def shutdown() -> None:
    """Flush what is left and undo the instrumentation (a process's end; tests)."""
    global _current  # noqa: PLW0603 - one provider per process
    if _current is None:
        return
    for instrumentor in _current.instrumentors:
        instrumentor.uninstrument()
    _current.provider.shutdown()
    _current = None


# gRPC codes that are the server's fault: its span's status is ERROR (as the
# OpenTelemetry conventions for RPC server spans say); a caller's mistake is not.
_SERVER_FAULTS = frozenset(
    {
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DATA_LOSS,
    }
)


def server_span(
    service: str, method: str, metadata: Any
) -> contextlib.AbstractContextManager[Span]:
    """The server span of one unary call of a Darkroom method (`rpc.unary` opens it), in
    the caller's trace when its metadata carries `traceparent`.

    Ours, not opentelemetry-instrumentation-grpc's aio interceptor: with the same names
    and attributes, that one cost 190 µs of CPU per call here even when the call was not
    sampled (a proxy of the servicer context, its attributes and peer parsed every call),
    a sixth of a submit's CPU."""
    assert _current is not None
    carrier = {k: v for k, v in metadata or () if k in _PROPAGATED and isinstance(v, str)}
    return _current.tracer.start_as_current_span(
        f"/{service}/{method}",
        context=_PROPAGATOR.extract(carrier) if carrier else None,
        kind=SpanKind.SERVER,
        attributes={"rpc.system": "grpc", "rpc.service": service, "rpc.method": method},
        record_exception=False,
        set_status_on_exception=False,
    )


def set_code(span: Span, code: grpc.StatusCode) -> None:
    """Record the status a call ends with on its server span."""
    if not span.is_recording():
        return
    span.set_attribute("rpc.grpc.status_code", code.value[0])
    if code in _SERVER_FAULTS:
        span.set_status(Status(StatusCode.ERROR, code.name))


def traceparent() -> str | None:
    """The W3C `traceparent` of the span current now (the SubmitJob's), for the row; None
    when that span is not sampled (nothing would be found at the end of a link to it)."""
    if _current is None or not trace.get_current_span().get_span_context().trace_flags.sampled:
        return None
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier)
    return carrier.get("traceparent")


def linked(parent: str | None) -> list[Link]:
    """A link to the span a `traceparent` names; none for None or a malformed one."""
    if not parent:
        return []
    ctx = _PROPAGATOR.extract({"traceparent": parent})
    span_context = trace.get_current_span(ctx).get_span_context()
    return [Link(span_context)] if span_context.is_valid else []


@contextlib.contextmanager
def span(
    name: str,
    *,
    kind: SpanKind = SpanKind.INTERNAL,
    links: list[Link] | None = None,
    attributes: Mapping[str, Any] | None = None,
    root: bool = False,
) -> Iterator[trace.Span]:
    """A span current for the block (a no-op one when off). `root`: it starts a trace of its
    own instead of joining the current one."""
    if _current is None:
        yield trace.INVALID_SPAN
        return
    ctx = otel_context.Context() if root else None
    with _current.tracer.start_as_current_span(
        name, context=ctx, kind=kind, links=links, attributes=attributes
    ) as current:
        yield current


def attempt_span(
    job_id: str, model: str, attempt: int, parent: str | None, started_ns: int
) -> contextlib.AbstractContextManager[trace.Span]:
    """The span of one attempt of a job, from `started_ns` (before its claim): a trace of
    its own, linked to the submit's span that `parent` (the row's `traceparent`) names, and
    sampled whenever that one was."""
    if _current is None:
        return contextlib.nullcontext(trace.INVALID_SPAN)
    return _current.tracer.start_as_current_span(
        "darkroom.attempt",
        context=otel_context.Context(),
        kind=SpanKind.CONSUMER,
        links=linked(parent),
        attributes={
            "darkroom.job_id": job_id,
            "darkroom.model": model,
            "darkroom.attempt": attempt,
        },
        start_time=started_ns,
    )


class StreamSpans:
    """A long server stream traced by its ends (`with StreamSpans(...) as spans:` around
    the stream, `spans.sent()` after each message): an `open` span from the call's start
    to its first message and a `close` span at its end, in the caller's trace (from the
    call's `traceparent` metadata) — never one span for a stream that may stay open for
    hours. Off, it only counts."""

    def __init__(self, method: str, metadata: Any, attributes: Mapping[str, Any]) -> None:
        self._method = method
        self._attributes = {"rpc.system": "grpc", "rpc.method": method, **attributes}
        self._opening: trace.Span | None = None
        self._started = time.monotonic()
        self.messages = 0
        if _current is not None:
            carrier = {k: v for k, v in metadata or () if isinstance(v, str)}
            self._opening = _current.tracer.start_span(
                f"{method} open",
                context=_PROPAGATOR.extract(carrier),
                kind=SpanKind.SERVER,
                attributes=self._attributes,
            )

    def __enter__(self) -> StreamSpans:
        return self

    def sent(self) -> None:
        """One more message went out; the first ends the opening."""
        self.messages += 1
        if self.messages == 1 and self._opening is not None:
            self._opening.end()

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, _tb: Any
    ) -> None:
        if self._opening is None or _current is None:
            return
        if self.messages == 0:
            self._opening.end()
        outcome = "OK" if exc is None else _status_name(exc)
        attributes = {
            **self._attributes,
            "rpc.grpc.status_code": outcome,
            "darkroom.messages": self.messages,
            "darkroom.stream_seconds": round(time.monotonic() - self._started, 3),
        }
        _current.tracer.start_span(
            f"{self._method} close",
            context=trace.set_span_in_context(self._opening),
            kind=SpanKind.SERVER,
            attributes=attributes,
        ).end()


def _status_name(exc: BaseException) -> str:
    """The status a stream that raised `exc` ends with, as the RPC's log line says it."""
    if isinstance(exc, (asyncio.CancelledError, GeneratorExit)):
        return "CANCELLED"
    code = getattr(exc, "code", None)
    return code.name if isinstance(code, grpc.StatusCode) else "UNKNOWN"


def add_log_ids(_logger: Any, _name: str, event: MutableMapping[str, Any]) -> Any:
    """A structlog processor: `trace_id` and `span_id` of the current span, when there is
    one (hex, as every tracing backend shows them)."""
    current = trace.get_current_span()
    if isinstance(current, NonRecordingSpan) and not current.get_span_context().is_valid:
        return event
    span_context = current.get_span_context()
    if span_context.is_valid:
        event["trace_id"] = format(span_context.trace_id, "032x")
        event["span_id"] = format(span_context.span_id, "016x")
    return event
