"""Migrations build the schema from an empty database and tear it down again."""

from __future__ import annotations

import psycopg
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine

from darkroom import db
from darkroom.models import Base
from tests.conftest import create_database, drop_database
from tests.helpers import RUN_ID


def _tables_and_triggers(url: str) -> tuple[set[str], set[str]]:
    with psycopg.connect(url.replace("+psycopg", "")) as connection:
        tables = {
            row[0]
            for row in connection.execute(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
            )
        }
        triggers = {
            row[0]
            for row in connection.execute("SELECT tgname FROM pg_trigger WHERE NOT tgisinternal")
        }
        return tables, triggers


def test_upgrade_downgrade_upgrade_from_empty(postgres_admin_url: str) -> None:
    name = f"darkroom_migrate_{RUN_ID}"
    url = create_database(postgres_admin_url, name)
    try:
        assert _tables_and_triggers(url) == (set(), set())
        db.migrate(url)
        tables, triggers = _tables_and_triggers(url)
        assert {"jobs", "alembic_version"} <= tables
        assert "jobs_check_transition" in triggers
        command.downgrade(db.alembic_config(url), "base")
        assert _tables_and_triggers(url) == ({"alembic_version"}, set())
        db.migrate(url)
        assert "jobs" in _tables_and_triggers(url)[0]
    finally:
        drop_database(postgres_admin_url, name)


def test_the_migrated_schema_matches_the_models(postgres_admin_url: str) -> None:
    """An index or column declared in models.py but in no migration (or the reverse)."""
    name = f"darkroom_compare_{RUN_ID}"
    url = create_database(postgres_admin_url, name)
    engine = create_engine(url)
    try:
        db.migrate(url)
        with engine.connect() as connection:
            context = MigrationContext.configure(connection)
            assert compare_metadata(context, Base.metadata) == []
            indexes = {
                row[0]
                for row in connection.exec_driver_sql(
                    "SELECT indexname FROM pg_indexes WHERE tablename = 'jobs'"
                )
            }
        assert "ix_jobs_active_model" in indexes
    finally:
        engine.dispose()
        drop_database(postgres_admin_url, name)
