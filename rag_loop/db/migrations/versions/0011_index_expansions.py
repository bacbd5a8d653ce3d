"""index_expansions: the questions users confirmed a chunk answers, indexed with it on the
BM25 side of one index version (document expansion the loop learns)

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-03 09:05:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "index_expansions",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column(
            "index_version_id", sa.Integer(), sa.ForeignKey("index_versions.id"), nullable=False
        ),
        sa.Column("chunk_id", sa.String(64), nullable=False),
        sa.Column("question", sa.Text(), nullable=False),
    )
    op.create_index(
        "ix_index_expansions_index_version_id", "index_expansions", ["index_version_id"]
    )


def downgrade() -> None:
    op.drop_index("ix_index_expansions_index_version_id", table_name="index_expansions")
    op.drop_table("index_expansions")
