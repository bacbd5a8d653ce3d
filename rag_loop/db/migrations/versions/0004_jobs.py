"""jobs: background work run in-process or by queue workers

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-25 18:40:00
"""

import sqlalchemy as sa
from alembic import op

import rag_loop.db.models

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "jobs",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("worker", sa.String(length=128), nullable=True),
        sa.Column("actor", sa.String(length=128), nullable=False),
        sa.Column("created_at", rag_loop.db.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("started_at", rag_loop.db.models.UTCDateTime(timezone=True), nullable=True),
        sa.Column("heartbeat_at", rag_loop.db.models.UTCDateTime(timezone=True), nullable=True),
        sa.Column("finished_at", rag_loop.db.models.UTCDateTime(timezone=True), nullable=True),
        sa.Column("result", sa.JSON(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_jobs_status", "jobs", ["status"])
    op.create_index("ix_jobs_created_at", "jobs", ["created_at"])


def downgrade() -> None:
    op.drop_index("ix_jobs_created_at", table_name="jobs")
    op.drop_index("ix_jobs_status", table_name="jobs")
    op.drop_table("jobs")
