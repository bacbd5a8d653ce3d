"""correction_reviews (one decision per reviewer), amendments (a passage's text replaced by
a reviewer's), corrections.mode/proposal/applied

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-03 05:10:00
"""

import sqlalchemy as sa
from alembic import op

import rag_loop.db.models

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("corrections") as batch:
        batch.add_column(sa.Column("mode", sa.String(8), nullable=True))
        batch.add_column(sa.Column("proposal", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("applied", sa.Boolean(), nullable=False, server_default="0"))
    # corrections approved before this migration serve: they were indexed as new documents
    op.execute(
        "UPDATE corrections SET applied = (status = 'approved'), mode = 'add' "
        "WHERE status = 'approved'"
    )
    op.create_table(
        "correction_reviews",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("correction_id", sa.Integer(), sa.ForeignKey("corrections.id"), nullable=False),
        sa.Column("reviewer", sa.String(128), nullable=False),
        sa.Column("decision", sa.String(8), nullable=False),
        sa.Column("note", sa.Text(), nullable=True),
        sa.Column("created_at", rag_loop.db.models.UTCDateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_correction_reviews_correction_id", "correction_reviews", ["correction_id"])
    op.execute(
        "INSERT INTO correction_reviews (correction_id, reviewer, decision, note, created_at) "
        "SELECT id, reviewer, CASE status WHEN 'approved' THEN 'approve' ELSE 'reject' END, "
        "review_note, reviewed_at FROM corrections "
        "WHERE status IN ('approved', 'rejected') AND reviewer IS NOT NULL "
        "AND reviewed_at IS NOT NULL"
    )
    op.create_table(
        "amendments",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("correction_id", sa.Integer(), sa.ForeignKey("corrections.id"), nullable=True),
        sa.Column("document_id", sa.String(512), nullable=False),
        sa.Column("source_chunk_id", sa.String(64), nullable=False),
        sa.Column("source_hash", sa.String(64), nullable=False),
        sa.Column("source_text", sa.Text(), nullable=False),
        sa.Column("chunk_id", sa.String(64), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("created_by", sa.String(128), nullable=False),
        sa.Column("created_at", rag_loop.db.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("closed_by", sa.String(128), nullable=True),
        sa.Column("closed_at", rag_loop.db.models.UTCDateTime(timezone=True), nullable=True),
        sa.Column("flag", sa.JSON(), nullable=True),
    )
    op.create_index("ix_amendments_correction_id", "amendments", ["correction_id"])
    op.create_index("ix_amendments_document_id", "amendments", ["document_id"])
    op.create_index("ix_amendments_status", "amendments", ["status"])


def downgrade() -> None:
    op.drop_table("amendments")
    op.drop_table("correction_reviews")
    with op.batch_alter_table("corrections") as batch:
        batch.drop_column("applied")
        batch.drop_column("proposal")
        batch.drop_column("mode")
