"""Governance: policy versions, disputes, inboxes, record governance state

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-21
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("records") as batch:
        batch.add_column(sa.Column("gov", sa.Text(), nullable=False, server_default="{}"))
        batch.create_index("ix_records_state_head_idx", ["state", "head_idx"])
    op.create_table(
        "policies",
        sa.Column("version", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("document", sa.Text(), nullable=False),
        sa.Column("statement_id", sa.String(length=64), nullable=False),
        sa.Column("leaf_idx", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("version", name=op.f("pk_policies")),
    )
    op.create_table(
        "disputes",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("record_id", sa.String(length=32), nullable=False),
        sa.Column("opened_by", sa.String(length=64), nullable=False),
        sa.Column("reason", sa.String(length=32), nullable=False),
        sa.Column("note", sa.Text(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("votes", sa.Text(), nullable=False),
        sa.Column("opened_idx", sa.BigInteger(), nullable=False),
        sa.Column("resolved_idx", sa.BigInteger(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_disputes")),
    )
    op.create_index("ix_disputes_record_id", "disputes", ["record_id"])
    op.create_table(
        "notifications",
        sa.Column("org_id", sa.String(length=64), nullable=False),
        sa.Column("idx", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("seq", sa.SmallInteger(), autoincrement=False, nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("record_id", sa.String(length=32), nullable=True),
        sa.Column("dispute_id", sa.String(length=32), nullable=True),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("org_id", "idx", "seq", name=op.f("pk_notifications")),
    )


def downgrade() -> None:
    op.drop_table("notifications")
    op.drop_index("ix_disputes_record_id", table_name="disputes")
    op.drop_table("disputes")
    op.drop_table("policies")
    with op.batch_alter_table("records") as batch:
        batch.drop_index("ix_records_state_head_idx")
        batch.drop_column("gov")
