"""Merkle tiles and signed checkpoints

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-21
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "tiles",
        sa.Column("level", sa.SmallInteger(), autoincrement=False, nullable=False),
        sa.Column("idx", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("hashes", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("level", "idx", name=op.f("pk_tiles")),
    )
    op.create_table(
        "checkpoints",
        sa.Column("size", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("root_hash", sa.LargeBinary(length=32), nullable=False),
        sa.Column("note", sa.Text(), nullable=False),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("size", name=op.f("pk_checkpoints")),
    )
    _backfill_tiles()


def _backfill_tiles() -> None:
    """Build tiles for leaves logged before this revision; the next append signs a checkpoint."""
    from federation.log.tree import edge_tile_keys, extend_tiles
    from federation.protocol.merkle import leaf_hash

    bind = op.get_bind()
    log = sa.table("log", sa.column("idx", sa.BigInteger), sa.column("leaf", sa.LargeBinary))
    tiles = sa.table(
        "tiles",
        sa.column("level", sa.SmallInteger),
        sa.column("idx", sa.BigInteger),
        sa.column("hashes", sa.LargeBinary),
    )
    store: dict[tuple[int, int], bytes] = {}
    size = 0
    while True:
        rows = bind.execute(
            sa.select(log.c.idx, log.c.leaf)
            .where(log.c.idx >= size)
            .order_by(log.c.idx)
            .limit(10_000)
        ).all()
        if not rows:
            break
        edges = {k: store[k] for k in edge_tile_keys(size) if k in store}
        store.update(extend_tiles(size, edges, [leaf_hash(bytes(r.leaf)) for r in rows]))
        size += len(rows)
    if store:
        op.bulk_insert(
            tiles, [{"level": lv, "idx": ix, "hashes": h} for (lv, ix), h in sorted(store.items())]
        )


def downgrade() -> None:
    op.drop_table("checkpoints")
    op.drop_table("tiles")
