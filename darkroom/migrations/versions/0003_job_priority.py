"""A job's priority among its owner's queued jobs.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-03 10:30:00

`priority` (-10 to 10, 0 normal) joins the job spec: when its owner's turn comes in the
model's fair-share queue, the owner's job of highest priority starts first. Existing jobs
are normal priority. Adding a column with a constant default is instant on PostgreSQL 11+.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("jobs", sa.Column("priority", sa.Integer(), server_default="0", nullable=False))
    op.create_check_constraint(op.f("ck_jobs_priority"), "jobs", "priority BETWEEN -10 AND 10")


def downgrade() -> None:
    op.drop_constraint(op.f("ck_jobs_priority"), "jobs", type_="check")
    op.drop_column("jobs", "priority")
