"""A job's events for browsers: server-sent events and a WebSocket, both resumable.

Each event goes out as the contract's `JobEvent` in JSON, named by its kind, so kinds
and fields added to the contract pass through unchanged. The event id is the resume
token: SSE sends it as `id:` (a browser's `EventSource` sends it back as `Last-Event-ID`
when it reconnects) and a WebSocket client sends it in its first message. Our client
resumes the upstream watch by itself when the Events service restarts, and never yields
an event twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator

import anyio
import grpc
import structlog
from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.requests import Request
from starlette.responses import Response
from starlette.websockets import WebSocket, WebSocketDisconnect

from darkroom.services.gateway import calls
from darkroom.services.gateway.errors import HTTP_STATUS, error_body
from darkroom.services.gateway.handlers import as_json, authenticated
from darkroom.services.gateway.session import Caller
from darkroom.services.gateway.state import gateway_of
from darkroom.v1 import events_service_pb2
from darkroom_client.errors import DarkroomError

log = structlog.get_logger("darkroom.gateway")

JobEvent = events_service_pb2.JobEvent
# A browser reconnects this soon after a stream drops (EventSource's default is ~3 s).
RECONNECT_MS = 1000
# The WebSocket close code for an error: 4000 + its HTTP status (4404: not found).
WS_ERROR_BASE = 4000


def event_kind(event: JobEvent) -> str:
    return event.WhichOneof("kind") or "message"


def _data(event: JobEvent) -> str:
    return json.dumps(as_json(event), separators=(",", ":"))


def _sse(event: JobEvent, *, first: bool = False) -> ServerSentEvent:
    # An event without an id (a snapshot taken while the log is gone) must not move the
    # browser's resume point: it goes out without an `id:` line.
    return ServerSentEvent(
        data=_data(event),
        event=event_kind(event),
        id=event.event_id or None,
        retry=RECONNECT_MS if first else None,
    )


async def until_shutdown(
    events: AsyncIterator[JobEvent], shutdown: anyio.Event
) -> AsyncIterator[JobEvent]:
    """The events until `shutdown` is set: then the stream ends cleanly (a browser
    reconnects, to another replica or to this one started again) instead of being cut
    when the server's grace period runs out."""
    stopping = asyncio.ensure_future(shutdown.wait())
    try:
        while True:
            following = asyncio.ensure_future(anext(events))
            await asyncio.wait({following, stopping}, return_when=asyncio.FIRST_COMPLETED)
            if not following.done():
                following.cancel()
                await asyncio.wait({following})
                return
            try:
                yield following.result()
            except StopAsyncIteration:
                return
    finally:
        stopping.cancel()


def _error_event(error: DarkroomError) -> ServerSentEvent:
    body = error_body(error.code, error.message, reason=error.reason, metadata=error.metadata)
    return ServerSentEvent(data=json.dumps(body), event="stream_error")


@authenticated
async def job_events(request: Request, caller: Caller) -> Response:
    """GET /v1/jobs/{job_id}/events: the job's events as `text/event-stream`, after
    `Last-Event-ID` (or `?after=`), to the terminal event."""
    gateway = gateway_of(request)
    after = request.headers.get("last-event-id") or request.query_params.get("after", "")
    events = aiter(gateway.client.watch(request.path_params["job_id"], after))
    try:
        # The first event proves the job is the caller's: a stranger gets a 404, not a stream.
        first = await anext(events)
    except StopAsyncIteration:
        first = None

    job_id = request.path_params["job_id"]

    async def stream() -> AsyncIterator[ServerSentEvent]:
        sent, ended = 0, "client_left"
        try:
            if first is None:
                return
            yield _sse(first, first=True)
            sent += 1
            async for event in until_shutdown(events, gateway.shutdown):
                yield _sse(event)
                sent += 1
            ended = "shutdown" if gateway.shutdown.is_set() else "job_ended"
        except DarkroomError as exc:  # the watch could not be resumed
            ended = f"error:{exc.code.name}"
            yield _error_event(exc)
        finally:
            await events.aclose()  # type: ignore[attr-defined]
            log.info("sse_stream_ended", job_id=job_id, after=after, sent=sent, ended=ended)

    return EventSourceResponse(
        stream(),
        ping=gateway.keepalive_s,
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


async def _wait_disconnect(websocket: WebSocket) -> None:
    """Until the client goes away (any later message is ignored)."""
    with contextlib.suppress(WebSocketDisconnect):
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                return


async def _send_events(websocket: WebSocket, job_id: str, after: str) -> None:
    gateway = gateway_of(websocket)
    events = aiter(gateway.client.watch(job_id, after))
    try:
        async for event in until_shutdown(events, gateway.shutdown):
            await websocket.send_text(_data(event))
    except DarkroomError as exc:
        body = error_body(exc.code, exc.message, reason=exc.reason, metadata=exc.metadata)
        await websocket.send_text(json.dumps(body))
        await websocket.close(WS_ERROR_BASE + HTTP_STATUS.get(exc.code, 500) % 1000)
        return
    finally:
        await events.aclose()  # type: ignore[attr-defined]
    # 1012 (service restart) when the gateway stops before the job ends: come back.
    await websocket.close(1012 if gateway.shutdown.is_set() else 1000)


async def job_ws(websocket: WebSocket) -> None:
    """WS /v1/jobs/{job_id}/ws: send `{"after_event_id": ""}` first, then read events."""
    gateway = gateway_of(websocket)
    caller = gateway.sessions.identify(websocket)
    await websocket.accept()
    if caller is None or (caller.via_cookie and not gateway.sessions.origin_allowed(websocket)):
        # A page of another site cannot watch with the browser's cookie (its Origin says so).
        body = error_body(
            grpc.StatusCode.UNAUTHENTICATED,
            "sign in, or send Authorization: Bearer <token>",
            reason="UNAUTHENTICATED",
        )
        await websocket.send_text(json.dumps(body))
        await websocket.close(WS_ERROR_BASE + 401)
        return
    try:
        async with asyncio.timeout(gateway.ws_hello_timeout_s):
            hello = await websocket.receive_json()
    except (TimeoutError, WebSocketDisconnect, json.JSONDecodeError, KeyError):
        await websocket.close(1008)
        return
    after = hello.get("after_event_id", "") if isinstance(hello, dict) else ""
    if not isinstance(after, str):
        await websocket.close(1008)
        return
    calls.set_caller(caller.token)
    sender = asyncio.create_task(_send_events(websocket, websocket.path_params["job_id"], after))
    watcher = asyncio.create_task(_wait_disconnect(websocket))
    try:
        await asyncio.wait({sender, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (sender, watcher):
            task.cancel()
        results = await asyncio.gather(sender, watcher, return_exceptions=True)
    for result in results:
        if isinstance(result, Exception) and not isinstance(
            result, WebSocketDisconnect | RuntimeError
        ):
            log.warning("websocket_failed", error=repr(result))
