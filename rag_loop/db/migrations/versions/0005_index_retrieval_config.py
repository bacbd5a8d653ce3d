"""index versions: retrieval configuration (dense or hybrid BM25 fusion) and a revision

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01 11:30:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("index_versions") as batch:
        # NULL: dense retrieval only (every version built before this migration)
        batch.add_column(sa.Column("retrieval", sa.JSON(), nullable=True))
        # bumped whenever the version's collection gains or loses chunks after it was built
        # (approved corrections, catch-up syncs), so per-process lexical indexes rebuild
        batch.add_column(sa.Column("revision", sa.Integer(), nullable=False, server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("index_versions") as batch:
        batch.drop_column("revision")
        batch.drop_column("retrieval")
