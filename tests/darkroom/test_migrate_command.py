"""`darkroom-migrate` as a rollout runs it: waits for the database, upgrades, checks."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.conftest import create_database, drop_database
from tests.helpers import RUN_ID


def _run(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "darkroom.migrate", *args],
        env={**os.environ, "DARKROOM_DATABASE_URL": url},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_check_upgrade_check_and_again(postgres_admin_url: str) -> None:
    name = f"darkroom_migrate_cmd_{RUN_ID}"
    url = create_database(postgres_admin_url, name)
    try:
        behind = _run(url, "--check")
        assert behind.returncode == 1, behind.stderr
        assert "behind" in behind.stdout
        first = _run(url)
        assert first.returncode == 0, first.stderr
        again = _run(url)  # idempotent: a second rollout's run changes nothing
        assert again.returncode == 0, again.stderr
        current = _run(url, "--check")
        assert current.returncode == 0
        assert "current" in current.stdout
    finally:
        drop_database(postgres_admin_url, name)


def test_a_database_that_never_answers_ends_it_with_a_message() -> None:
    url = "postgresql+psycopg://postgres@127.0.0.1:1/nothing"
    result = _run(url, "--wait", "1")
    assert result.returncode == 1
    assert "the database did not answer" in result.stderr
    assert "Traceback" not in result.stderr
