"""`darkroom-migrate`: bring the database at DARKROOM_DATABASE_URL to the latest schema.

Run before a rollout (a Kubernetes Job, or an init container: it is idempotent, and
Alembic's version row makes concurrent runs wait for each other's transaction). It waits
for the database to accept connections first, so it can start beside a database that is
still coming up. `--check` changes nothing: exit 0 when the schema is current, 1 when not.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence

import sqlalchemy
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from darkroom import db
from darkroom.config import load_settings


def _current(url: str) -> set[str]:
    engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.NullPool)
    try:
        with engine.connect() as connection:
            return set(MigrationContext.configure(connection).get_current_heads())
    finally:
        engine.dispose()


def _wait(url: str, patience: float) -> set[str]:
    deadline = time.monotonic() + patience
    while True:
        try:
            return _current(url)
        except sqlalchemy.exc.OperationalError as exc:
            if time.monotonic() >= deadline:
                message = f"darkroom-migrate: the database did not answer: {exc.orig}"
                raise SystemExit(message) from None
            time.sleep(1)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="darkroom-migrate", description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if not at the latest")
    parser.add_argument(
        "--wait", type=float, default=120, metavar="SECONDS", help="for the database (120)"
    )
    args = parser.parse_args(argv)
    url = load_settings("darkroom-migrate").database_url
    heads = set(ScriptDirectory.from_config(db.alembic_config(url)).get_heads())
    current = _wait(url, args.wait)
    if args.check:
        print(f"schema {'current' if current == heads else 'behind'}: {sorted(current)}")
        return 0 if current == heads else 1
    if current != heads:
        db.migrate(url)
    print(f"schema at {sorted(heads)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
