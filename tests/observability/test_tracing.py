"""Traces through a stack in this process, exported to memory: the generator's attempt is a
trace of its own that links to the SubmitJob span, statements and Redis commands are spans
within their calls, and a WatchJob stream is traced by its two ends only."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator, Sequence

import grpc
import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from darkroom import tracing
from darkroom.v1 import (
    events_service_pb2,
    events_service_pb2_grpc,
    job_pb2,
    jobs_service_pb2,
    jobs_service_pb2_grpc,
)
from tests.clients.conftest import StackFactory
from tests.helpers import Caller


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    """Tracing on for this test (before its stack is built), every span kept in memory."""
    exporter = InMemorySpanExporter()
    tracing.configure("darkroom-test", "", exporter=exporter, simple=True)
    yield exporter
    tracing.shutdown()


def _named(spans: InMemorySpanExporter, name: str) -> list[ReadableSpan]:
    return [span for span in spans.get_finished_spans() if span.name == name]


def _within(spans: InMemorySpanExporter, parent: ReadableSpan) -> list[ReadableSpan]:
    """Every span below `parent`, at any depth."""
    found, frontier = [], {parent.context.span_id}
    while frontier:
        below = [
            span
            for span in spans.get_finished_spans()
            if span.parent is not None and span.parent.span_id in frontier
        ]
        found += below
        frontier = {span.context.span_id for span in below}
    return found


async def test_an_attempt_links_to_the_submit_that_recorded_it(
    spans: InMemorySpanExporter, make_stack: StackFactory
) -> None:
    stack = await make_stack()
    async with grpc.aio.insecure_channel(stack.jobs_target) as jobs_channel:
        caller = Caller(jobs_service_pb2_grpc.JobsServiceStub(jobs_channel), "alice-token")
        job_id = (await caller.submit(width=64, height=64, steps=3)).job.id
        async with asyncio.timeout(30):
            while (await caller.get(job_id)).state != job_pb2.JOB_STATE_SUCCEEDED:
                await asyncio.sleep(0.05)
        async with grpc.aio.insecure_channel(stack.events_target) as events_channel:
            events = events_service_pb2_grpc.EventsServiceStub(events_channel)
            call = events.WatchJob(
                events_service_pb2.WatchJobRequest(job_id=job_id),
                metadata=caller.metadata,
            )
            received = [response async for response in call]
    # The job had ended: its snapshot is all the stream holds.
    [response] = received
    assert response.event.snapshot.job.state == job_pb2.JOB_STATE_SUCCEEDED
    await asyncio.sleep(0.2)  # the stream's close span ends as its handler returns

    [submit] = [
        span
        for span in _named(spans, "/darkroom.v1.JobsService/SubmitJob")
        if span.kind == SpanKind.SERVER
    ]
    [attempt] = [
        span
        for span in _named(spans, "darkroom.attempt")
        if span.attributes and span.attributes["darkroom.job_id"] == job_id
    ]
    # Its own trace, linked to the submit's span.
    assert attempt.context.trace_id != submit.context.trace_id
    assert [(link.context.trace_id, link.context.span_id) for link in attempt.links] == [
        (submit.context.trace_id, submit.context.span_id)
    ]
    assert attempt.attributes is not None
    assert attempt.attributes["darkroom.attempt"] == 1
    # The attempt's claim, lease renewals and commit are statements within it.
    statements = [
        span
        for span in _within(spans, attempt)
        if span.attributes and "db.statement" in span.attributes
    ]
    assert any("UPDATE jobs" in str(span.attributes["db.statement"]) for span in statements)  # type: ignore[index]
    # The submit's insert is one span for its batch, linked to the submit; the batch's
    # announce (event + queue message) is a Redis pipeline in the submit's trace.
    [insert] = _named(spans, "darkroom.submit.insert")
    assert (submit.context.span_id, submit.context.trace_id) in {
        (link.context.span_id, link.context.trace_id) for link in insert.links
    }
    in_submit = [
        span
        for span in spans.get_finished_spans()
        if span.context.trace_id == submit.context.trace_id
    ]
    assert any(
        span.attributes and span.attributes.get("db.system") == "redis" for span in in_submit
    )

    # WatchJob: an open and a close span, no span for the stream's life.
    assert not _named(spans, "/darkroom.v1.EventsService/WatchJob")
    [opened] = _named(spans, "WatchJob open")
    [closed] = _named(spans, "WatchJob close")
    assert closed.parent is not None
    assert closed.parent.span_id == opened.context.span_id
    assert closed.attributes is not None
    assert closed.attributes["darkroom.messages"] == len(received)
    assert closed.attributes["rpc.grpc.status_code"] == "OK"


def test_log_lines_carry_the_ids_of_their_span(spans: InMemorySpanExporter) -> None:
    with tracing.span("darkroom.test") as current:
        event = tracing.add_log_ids(None, "info", {"event": "x"})
    context = current.get_span_context()
    assert event["trace_id"] == format(context.trace_id, "032x")
    assert event["span_id"] == format(context.span_id, "016x")
    assert "trace_id" not in tracing.add_log_ids(None, "info", {"event": "outside"})


def test_off_means_no_spans_and_no_ids() -> None:
    assert not tracing.enabled()
    assert tracing.traceparent() is None
    with tracing.span("darkroom.test"):
        assert "trace_id" not in tracing.add_log_ids(None, "info", {"event": "x"})


async def test_at_ratio_zero_only_a_caller_sampled_trace_is_recorded_and_its_attempt_follows(
    make_stack: StackFactory,
) -> None:
    exporter = InMemorySpanExporter()
    tracing.configure("darkroom-test", "", exporter=exporter, simple=True, sample_ratio=0.0)
    try:
        stack = await make_stack()
        caller_trace, caller_span = 0x0AF7651916CD43DD8448EB211C80319C, 0x00F067AA0BA902B7
        sampled = f"00-{caller_trace:032x}-{caller_span:016x}-01"
        async with grpc.aio.insecure_channel(stack.jobs_target) as channel:
            caller = Caller(jobs_service_pb2_grpc.JobsServiceStub(channel), "alice-token")
            quiet = (await caller.submit(width=64, height=64, steps=2)).job.id
            request_id = str(uuid.uuid4())
            traced = (
                await caller.stub.SubmitJob(
                    jobs_service_pb2.SubmitJobRequest(
                        request_id=request_id,
                        spec=job_pb2.JobSpec(prompt="a lighthouse", width=64, height=64, steps=2),
                    ),
                    metadata=(*caller.metadata, ("traceparent", sampled)),
                )
            ).job.id
            async with asyncio.timeout(30):
                for job_id in (quiet, traced):
                    while (await caller.get(job_id)).state != job_pb2.JOB_STATE_SUCCEEDED:
                        await asyncio.sleep(0.05)
        finished = exporter.get_finished_spans()
        attempts = {
            span.attributes["darkroom.job_id"]: span
            for span in finished
            if span.name == "darkroom.attempt" and span.attributes
        }
        # The caller's sampled trace: its SubmitJob span is a child of the caller's span,
        # and the attempt, at ratio 0, is recorded because it links to a sampled span.
        [submit] = [
            span
            for span in _named_in(finished, "/darkroom.v1.JobsService/SubmitJob")
            if span.context.trace_id == caller_trace
        ]
        assert submit.parent is not None
        assert submit.parent.span_id == caller_span
        assert set(attempts) == {traced}
        assert [link.context.span_id for link in attempts[traced].links] == [submit.context.span_id]
        # Nothing else was recorded: not the other submit, nor any GetJob.
        servers = {span.context.trace_id for span in finished if span.kind == SpanKind.SERVER}
        assert servers == {caller_trace}
    finally:
        tracing.shutdown()


def _named_in(spans: Sequence[ReadableSpan], name: str) -> list[ReadableSpan]:
    return [span for span in spans if span.name == name]
