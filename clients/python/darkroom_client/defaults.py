"""Where a client connects by default, with which token, and how its channels behave."""

from __future__ import annotations

import os
from pathlib import Path

import grpc

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


class TLSSettingsError(ValueError):
    """A TLS environment variable names a file that cannot be read, or half a pair."""


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in {"1", "true", "yes", "on"}


def _pem(variable: str) -> bytes:
    path = os.environ[variable]
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise TLSSettingsError(f"{variable}: cannot read {path}: {exc.strerror}") from exc


def credentials_from_env() -> grpc.ChannelCredentials | None:
    """TLS from the environment, or None (plaintext) when none of these is set:

    - `DARKROOM_TLS_CA_FILE`: the CA bundle (PEM) that signed the servers' certificates;
    - `DARKROOM_TLS=1`: TLS against the system's trusted CAs;
    - `DARKROOM_TLS_CLIENT_CERT_FILE` and `DARKROOM_TLS_CLIENT_KEY_FILE`: this client's
      certificate and key, for servers that require mutual TLS.
    """
    ca = os.environ.get("DARKROOM_TLS_CA_FILE")
    cert = os.environ.get("DARKROOM_TLS_CLIENT_CERT_FILE")
    key = os.environ.get("DARKROOM_TLS_CLIENT_KEY_FILE")
    if not (ca or cert or key or _truthy(os.environ.get("DARKROOM_TLS"))):
        return None
    if bool(cert) != bool(key):
        raise TLSSettingsError(
            "set both DARKROOM_TLS_CLIENT_CERT_FILE and DARKROOM_TLS_CLIENT_KEY_FILE, or neither"
        )
    return grpc.ssl_channel_credentials(
        root_certificates=_pem("DARKROOM_TLS_CA_FILE") if ca else None,
        private_key=_pem("DARKROOM_TLS_CLIENT_KEY_FILE") if key else None,
        certificate_chain=_pem("DARKROOM_TLS_CLIENT_CERT_FILE") if cert else None,
    )
