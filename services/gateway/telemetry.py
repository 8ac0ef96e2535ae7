"""The gateway's metrics: an ASGI middleware counting each request by its route's path
template (never the path itself, which holds job ids), method and status, timing it to its
response's headers, and counting the event streams and WebSockets open."""

from __future__ import annotations

import time
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from darkroom import metrics


def _route(scope: Scope) -> str:
    route = scope.get("route")  # set by Starlette's router on the matched route
    return str(getattr(route, "path", "")) or "unmatched"


class Metered:
    """Wraps the app: every HTTP request and WebSocket is counted once it ends."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            await self._websocket(scope, receive, send)
            return
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status: dict[str, Any] = {"code": 500}
        stream = False

        async def counted(message: Message) -> None:
            nonlocal stream
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
                headers = dict(message.get("headers") or [])
                stream = headers.get(b"content-type", b"").startswith(b"text/event-stream")
                metrics.HTTP_SECONDS.labels(_route(scope), scope["method"]).observe(
                    time.perf_counter() - started
                )
                if stream:
                    metrics.HTTP_OPEN_STREAMS.labels("sse").inc()
            await send(message)

        try:
            await self.app(scope, receive, counted)
        finally:
            if stream:
                metrics.HTTP_OPEN_STREAMS.labels("sse").dec()
            code = str(status["code"])
            metrics.HTTP_REQUESTS.labels(_route(scope), scope["method"], code).inc()

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        gauge = metrics.HTTP_OPEN_STREAMS.labels("websocket")
        gauge.inc()
        try:
            await self.app(scope, receive, send)
        finally:
            gauge.dec()
            metrics.HTTP_REQUESTS.labels(_route(scope), "WEBSOCKET", "101").inc()
