"""The benchmark's own world: a fresh database, a Redis key prefix, a storage folder.

Postgres and Redis are the running ones (DARKROOM_BENCH_DATABASE_URL, DARKROOM_BENCH_REDIS_URL)
or, when none answers, throwaway servers from `darkroom.devservers`, as the tests do. The
database, every key under the prefix and the folder are removed at the end.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, cast

import psycopg
import redis
from pydantic import BaseModel
from sqlalchemy import make_url

from darkroom import db, devservers
from darkroom.config import DEV_TOKEN, OwnerPolicy, Settings

DEFAULT_DATABASE_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
AUTH = (("authorization", f"Bearer {DEV_TOKEN}"),)


def ignore_shell_settings() -> list[str]:
    """Forget DARKROOM_* variables of the calling shell: the bench measures the defaults.

    Returns the names dropped. DARKROOM_BENCH_* (where to find the servers) stay.
    """
    dropped = [
        name
        for name in os.environ
        if name.startswith("DARKROOM_") and not name.startswith("DARKROOM_BENCH_")
    ]
    for name in dropped:
        del os.environ[name]
    return dropped


def _plain(url: str) -> str:
    return url.replace("+psycopg", "")


@dataclass
class BenchEnv:
    """Where this run keeps its data, and the settings every process of it shares."""

    database_url: str
    redis_url: str
    key_prefix: str
    workdir: Path
    postgres_throwaway: bool
    redis_throwaway: bool

    def settings(self, suffix: str, **changes: Any) -> Settings:
        """Settings for one part of the run, on a key prefix of its own under the run's."""
        values: dict[str, Any] = {
            "database_url": self.database_url,
            "redis_url": self.redis_url,
            "key_prefix": f"{self.key_prefix}-{suffix}",
            "storage_url": str(self.workdir / "storage" / suffix),
            "log_json": True,
            # Quotas checked as in a deployment (the admission script runs), never reached.
            "owner_policy": OwnerPolicy(max_queued=10**9, max_watches=10**9),
        }
        values.update(changes)
        return Settings(**values)

    def child_env(self, settings: Settings, **extra: str) -> dict[str, str]:
        """The environment of a service process started with `settings` (every field of
        them, so the process sees exactly the settings the bench uses), plus `extra`."""
        env = dict(os.environ)
        for name in type(settings).model_fields:
            value = getattr(settings, name)
            if value is not None:
                env[f"DARKROOM_{name.upper()}"] = _env_value(value)
        env["PYTHONUNBUFFERED"] = "1"
        env.update(extra)
        return env

    def reset_database(self) -> None:
        """Empty the job table, so a section sees only its own jobs (the reconciler scans
        the whole table, whatever the key prefix)."""
        with psycopg.connect(_plain(self.database_url), autocommit=True) as connection:
            connection.execute("TRUNCATE jobs")


def _env_value(value: object) -> str:
    if isinstance(value, timedelta):
        return f"{value.total_seconds():g}"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, BaseModel):  # a table setting, such as an owner policy
        return value.model_dump_json()
    if isinstance(value, list | dict):
        return json.dumps(value, default=_json_of_model)
    return str(value)


def _json_of_model(value: object) -> object:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, timedelta):  # a list of durations, such as a retry schedule
        return value.total_seconds()
    raise TypeError(f"not JSON: {value!r}")


def _create_database(admin_url: str, name: str) -> str:
    with psycopg.connect(_plain(admin_url), autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    return make_url(admin_url).set(database=name).render_as_string(hide_password=False)


def _drop_database(admin_url: str, name: str) -> None:
    with psycopg.connect(_plain(admin_url), autocommit=True) as connection:
        connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _delete_keys(url: str, prefix: str) -> int:
    client = redis.Redis.from_url(url)
    deleted = 0
    try:
        for pattern in (f"{prefix}*", f"arq:*:{prefix}*"):
            batch: list[Any] = []
            for key in client.scan_iter(match=pattern, count=1000):
                batch.append(key)
                if len(batch) >= 500:
                    deleted += cast(int, client.delete(*batch))
                    batch = []
            if batch:
                deleted += cast(int, client.delete(*batch))
    finally:
        client.close()
    return deleted


@contextlib.contextmanager
def bench_env(log: Any = None) -> Iterator[BenchEnv]:
    """Set up this run's database, key prefix and folder; remove them all afterwards."""
    say = log or (lambda text: print(text, file=sys.stderr))
    run_id = uuid.uuid4().hex[:10]
    postgres = devservers.postgres(
        os.environ.get("DARKROOM_BENCH_DATABASE_URL", DEFAULT_DATABASE_URL)
    )
    redis_server = devservers.redis_server(
        os.environ.get("DARKROOM_BENCH_REDIS_URL", DEFAULT_REDIS_URL)
    )
    name = f"darkroom_bench_{run_id}"
    workdir = Path(tempfile.mkdtemp(prefix="darkroom-bench-"))
    created = False
    env: BenchEnv | None = None
    try:
        url = _create_database(postgres.url, name)
        created = True
        db.migrate(url)
        env = BenchEnv(
            database_url=url,
            redis_url=redis_server.url,
            key_prefix=f"darkroom-bench-{run_id}",
            workdir=workdir,
            postgres_throwaway=postgres.started is not None,
            redis_throwaway=redis_server.started is not None,
        )
        say(
            f"database {name} ({'throwaway server' if env.postgres_throwaway else 'running'}),"
            f" Redis prefix {env.key_prefix}"
            f" ({'throwaway server' if env.redis_throwaway else 'running'})"
        )
        yield env
    finally:
        if env is not None:
            with contextlib.suppress(Exception):
                say(f"removed {_delete_keys(env.redis_url, env.key_prefix)} Redis keys")
        if created:
            with contextlib.suppress(Exception):
                _drop_database(postgres.url, name)
                say(f"dropped database {name}")
        shutil.rmtree(workdir, ignore_errors=True)
        redis_server.close()
        postgres.close()
