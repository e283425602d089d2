"""log_head.identities: a counter bumped by every change to organisations or keys

Servers cache key lookups for authentication and check this counter, read
with the log size, on every request: a revocation or suspension is seen by
every worker on its very next request.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-21
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("log_head") as batch:
        batch.add_column(
            sa.Column("identities", sa.BigInteger(), nullable=False, server_default="0")
        )


def downgrade() -> None:
    with op.batch_alter_table("log_head") as batch:
        batch.drop_column("identities")
