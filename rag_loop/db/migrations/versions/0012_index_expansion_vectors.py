"""index_expansions.vector: a question's embedding by its index version's query encoder,
stored when the version is built, so no process embeds them again on its first search

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-05 05:10:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # versions built before this migration keep NULL: their questions are embedded on first use
    with op.batch_alter_table("index_expansions") as batch:
        batch.add_column(sa.Column("vector", sa.LargeBinary(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("index_expansions") as batch:
        batch.drop_column("vector")
