"""loop_cycles.recipe: what a cycle's training chose for itself on the validation feedback
(epochs run and kept, the encoder trained or kept, the hybrid dense weight, the validation
nDCG@10 of every epoch)

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-03 02:30:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("loop_cycles") as batch:
        batch.add_column(sa.Column("recipe", sa.JSON(), nullable=False, server_default="{}"))


def downgrade() -> None:
    with op.batch_alter_table("loop_cycles") as batch:
        batch.drop_column("recipe")
