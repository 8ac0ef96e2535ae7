"""Where a client connects by default, with which token, and how its channels behave."""

from __future__ import annotations

import os

DEFAULT_JOBS_TARGET = "localhost:50051"
DEFAULT_EVENTS_TARGET = "localhost:50052"
DEV_TOKEN = "darkroom-dev-token"  # noqa: S105 - the documented development token
DEFAULT_TIMEOUT = 10.0
# Each WatchJob stream carries this deadline; when it passes, the watch simply resumes.
WATCH_STREAM_DEADLINE = 300.0
# Reconnect soon after a server comes back, instead of gRPC's default 1 s to 2 min backoff.
CHANNEL_OPTIONS: tuple[tuple[str, int], ...] = (
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 2_000),
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
)


def jobs_target_from_env() -> str:
    """The Jobs address: `DARKROOM_JOBS_TARGET`, else `localhost:50051`."""
    return os.environ.get("DARKROOM_JOBS_TARGET") or DEFAULT_JOBS_TARGET


def events_target_from_env() -> str:
    """The Events address: `DARKROOM_EVENTS_TARGET`, else `localhost:50052`."""
    return os.environ.get("DARKROOM_EVENTS_TARGET") or DEFAULT_EVENTS_TARGET


def token_from_env() -> str:
    """The bearer token: `DARKROOM_TOKEN`, else the development token."""
    return os.environ.get("DARKROOM_TOKEN") or DEV_TOKEN
