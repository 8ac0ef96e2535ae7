"""`darkroom.v1.EventsService`: resumable WatchJob streams."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncGenerator
from typing import Any

import grpc
import structlog

from darkroom import metrics, tracing
from darkroom.admission import WatchAdmission
from darkroom.auth import Authenticator
from darkroom.errors import InvalidArgumentError
from darkroom.rpc import server_stream
from darkroom.services.events.watch import Watch, parse_after
from darkroom.v1 import events_service_pb2, events_service_pb2_grpc
from darkroom.validation import parse_uuid


class EventsServicer(events_service_pb2_grpc.EventsServiceServicer):
    """Handlers of the EventsService RPCs, scoped to the authenticated owner."""

    def __init__(
        self, watch: Watch, authenticator: Authenticator, admission: WatchAdmission | None = None
    ) -> None:
        self.watch = watch
        self.authenticator = authenticator
        self.admission = admission

    # The decorator turns this generator into a handler that writes each response itself
    # (see `server_stream`), which gRPC accepts for a server stream but its stubs do not say.
    @server_stream("WatchJob")
    async def WatchJob(  # type: ignore[override]
        self,
        request: events_service_pb2.WatchJobRequest,
        context: grpc.aio.ServicerContext[Any, Any],
        owner: str,
    ) -> AsyncGenerator[events_service_pb2.WatchJobResponse, None]:
        job_id, violations = parse_uuid("job_id", request.job_id)
        try:
            after = parse_after(request.after_event_id)
        except InvalidArgumentError as error:
            violations += error.violations
            after = ""
        if job_id is None or violations:
            raise InvalidArgumentError("the watch request is invalid", violations)
        structlog.contextvars.bind_contextvars(job_id=str(job_id))
        counting = metrics.enabled()
        with tracing.StreamSpans(
            "WatchJob", context.invocation_metadata(), {"darkroom.job_id": str(job_id)}
        ) as spans:
            async with contextlib.AsyncExitStack() as held:
                if self.admission is not None:  # one of the owner's streams, or RESOURCE_EXHAUSTED
                    await held.enter_async_context(self.admission.stream(owner))
                if counting:
                    metrics.EVENTS_WATCHERS.inc()
                    held.callback(metrics.EVENTS_WATCHERS.dec)
                # Closed here, not left to the garbage collector, when the stream ends early.
                events = await held.enter_async_context(
                    contextlib.aclosing(self.watch.events(owner, job_id, after))
                )
                async for event in events:
                    if counting:
                        _count_relayed(event)
                    yield events_service_pb2.WatchJobResponse(event=event)
                    spans.sent()


# Events a watcher gets that are not entries of the job's log (no delivery lag to count).
_NOT_LOGGED = frozenset({"snapshot", "position"})


def _count_relayed(event: events_service_pb2.JobEvent) -> None:
    """One logged event relayed, and how long after its append (the id's milliseconds,
    Redis's clock)."""
    if not event.event_id or event.WhichOneof("kind") in _NOT_LOGGED:
        return
    metrics.EVENTS_RELAYED.inc()
    millis = event.event_id.partition("-")[0]
    if millis.isdigit():
        metrics.EVENTS_LAG.observe(max(0.0, time.time() - int(millis) / 1000))
