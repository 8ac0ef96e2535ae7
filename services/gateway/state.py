"""What every gateway handler shares: the upstream client, sessions and stream settings."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import anyio
from starlette.requests import HTTPConnection

from darkroom.services.gateway.session import Sessions
from darkroom_client.aio import AsyncDarkroomClient


@dataclass
class Gateway:
    """One gateway process's collaborators (on `app.state.gateway`)."""

    client: AsyncDarkroomClient
    sessions: Sessions
    keepalive_s: float
    # Set when the gateway stops: open event streams end so that browsers reconnect.
    shutdown: anyio.Event
    # The local storage folder whose files may be served; None on GCS.
    storage_root: Path | None
    # How long a WebSocket may take to send its first message.
    ws_hello_timeout_s: float = 10.0


def gateway_of(connection: HTTPConnection) -> Gateway:
    gateway: Gateway = connection.app.state.gateway
    return gateway
