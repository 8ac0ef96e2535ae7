"""The gateway's Starlette application: every route, and the middleware around them."""

from __future__ import annotations

from pathlib import Path

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles

from darkroom import metrics
from darkroom.services.gateway import jobs_api, openapi, outputs, signin, streams
from darkroom.services.gateway.state import Gateway
from darkroom.services.gateway.telemetry import Metered

STATIC = Path(__file__).with_name("static")
# The page loads only its own files: nothing from elsewhere, no inline script.
PAGE_POLICY = (
    "default-src 'self'; img-src 'self' https: data:; connect-src 'self'; "
    "object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'"
)


async def page(request: Request) -> Response:
    return FileResponse(
        STATIC / "index.html",
        headers={"Content-Security-Policy": PAGE_POLICY, "Cache-Control": "no-cache"},
    )


async def openapi_json(request: Request) -> Response:
    return JSONResponse(openapi.document())


async def healthz(request: Request) -> Response:
    return JSONResponse({"status": "SERVING"})


def api_routes() -> list[BaseRoute]:
    """The routes the OpenAPI document describes."""
    return [
        Route("/v1/session", signin.session_info, methods=["GET"]),
        Route("/v1/session", signin.sign_in, methods=["POST"]),
        Route("/v1/session", signin.sign_out, methods=["DELETE"]),
        Route("/v1/jobs", jobs_api.create_job, methods=["POST"]),
        Route("/v1/jobs", jobs_api.list_jobs, methods=["GET"]),
        # Before `{job_id}`, which would otherwise take "ID:cancel" as an id.
        Route("/v1/jobs/{job_id}:cancel", jobs_api.cancel_job, methods=["POST"]),
        Route("/v1/jobs/{job_id}", jobs_api.get_job, methods=["GET"]),
        Route("/v1/jobs/{job_id}/events", streams.job_events, methods=["GET"]),
        WebSocketRoute("/v1/jobs/{job_id}/ws", streams.job_ws),
        Route("/v1/jobs/{job_id}/outputs/{index:int}", outputs.job_output, methods=["GET"]),
    ]


def application(gateway: Gateway, cors_origins: list[str]) -> Starlette:
    """The ASGI app of one gateway process."""
    middleware = []
    if cors_origins:
        middleware.append(
            Middleware(
                CORSMiddleware,
                allow_origins=cors_origins,
                allow_credentials=True,
                allow_methods=["GET", "POST", "DELETE"],
                allow_headers=[
                    "authorization",
                    "content-type",
                    "idempotency-key",
                    "last-event-id",
                    "x-csrf-token",
                ],
                expose_headers=["location", "retry-after", "idempotency-key"],
            )
        )
    routes = [
        Route("/", page, methods=["GET"]),
        Route("/openapi.json", openapi_json, methods=["GET"]),
        Route("/healthz", healthz, methods=["GET"]),
        *api_routes(),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    if metrics.enabled():  # outermost: it sees every answer, CORS refusals included
        middleware.insert(0, Middleware(Metered))
    app = Starlette(routes=routes, middleware=middleware)
    app.state.gateway = gateway
    return app
