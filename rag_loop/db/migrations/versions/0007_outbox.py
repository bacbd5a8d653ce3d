"""outbox: effects on MLflow and Chroma, written with the SQL change they follow;
loop_cycles.failed_in: the step a failed cycle failed in (was a key of the stages JSON)

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02 16:10:00
"""

import sqlalchemy as sa
from alembic import op

import rag_loop.db.models

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "outbox",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("created_at", rag_loop.db.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", rag_loop.db.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("done_at", rag_loop.db.models.UTCDateTime(timezone=True), nullable=True),
        sa.Column("outcome", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_outbox_done_at", "outbox", ["done_at"])
    with op.batch_alter_table("loop_cycles") as batch:
        batch.add_column(sa.Column("failed_in", sa.String(length=32), nullable=True))
    cycles = sa.table(
        "loop_cycles",
        sa.column("id", sa.Integer()),
        sa.column("stages", sa.JSON()),
        sa.column("failed_in", sa.String()),
    )
    bind = op.get_bind()
    for cycle_id, stages in bind.execute(sa.select(cycles.c.id, cycles.c.stages)).all():
        if isinstance(stages, dict) and "failed_in" in stages:
            rest = {k: v for k, v in stages.items() if k != "failed_in"}
            bind.execute(
                cycles.update()
                .where(cycles.c.id == cycle_id)
                .values(stages=rest, failed_in=stages["failed_in"])
            )


def downgrade() -> None:
    cycles = sa.table(
        "loop_cycles",
        sa.column("id", sa.Integer()),
        sa.column("stages", sa.JSON()),
        sa.column("failed_in", sa.String()),
    )
    bind = op.get_bind()
    for cycle_id, stages, failed_in in bind.execute(
        sa.select(cycles.c.id, cycles.c.stages, cycles.c.failed_in)
    ).all():
        if failed_in:
            bind.execute(
                cycles.update()
                .where(cycles.c.id == cycle_id)
                .values(stages={**(stages or {}), "failed_in": failed_in})
            )
    with op.batch_alter_table("loop_cycles") as batch:
        batch.drop_column("failed_in")
    op.drop_index("ix_outbox_done_at", table_name="outbox")
    op.drop_table("outbox")
