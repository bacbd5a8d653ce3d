"""interactions.failed_stage: the stage a failed ask failed in (retrieval or generation);
an ask that fails in retrieval is logged too now

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02 23:00:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("interactions") as batch:
        batch.add_column(sa.Column("failed_stage", sa.String(length=16), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("interactions") as batch:
        batch.drop_column("failed_stage")
