"""Appending leaves to the event log inside an :meth:`Database.appending` transaction."""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from itertools import count, repeat
from typing import Any

from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncConnection

from federation.log.checkpoints import CheckpointSigner, record_checkpoint
from federation.log.tree import MerkleTree
from federation.protocol.statements import SignedStatement, canonical_json
from federation.store.bulk import Inserts
from federation.store.schema import LEAF_STATEMENT, LEAF_VERSION, log, log_head


def statement_leaf(idx: int, statement: SignedStatement) -> bytes:
    """The leaf for an accepted statement: its exact signed bytes and signature."""
    return canonical_json(
        {
            "kind": "statement",
            "index": idx,
            "statement": base64.b64encode(statement.signed_bytes).decode("ascii"),
            "signature": base64.b64encode(statement.signature).decode("ascii"),
        }
    )


LOG_COLUMNS = ("idx", "kind", "leaf", "visible")


@dataclass
class LogBatch:
    """Leaves collected during one append transaction, written in one statement."""

    start: int
    rows: list[tuple[int, int, bytes, bool]] = field(default_factory=list)  # LOG_COLUMNS
    _tree: MerkleTree | None = field(default=None, repr=False)

    @property
    def next_idx(self) -> int:
        return self.start + len(self.rows)

    def add_statement(self, statement: SignedStatement) -> int:
        idx = self.next_idx
        self.rows.append((idx, LEAF_STATEMENT, statement_leaf(idx, statement), False))
        return idx

    def add_version(self, fields: dict[str, Any], *, visible: bool) -> int:
        """Append a record version; ``fields`` gains ``kind`` and ``index``."""
        idx = self.next_idx
        fields["kind"] = "version"
        fields["index"] = idx
        self.rows.append((idx, LEAF_VERSION, canonical_json(fields), visible))
        return idx

    def add_version_leaves(self, first: int, leaves: list[bytes], visible: list[bool]) -> None:
        """Append version leaves already encoded for indices ``first``, ``first + 1``, …

        ``visible[i]`` says whether consumers see ``leaves[i]``; ``first`` must
        be the next index.
        """
        if first != self.next_idx or len(leaves) != len(visible):
            raise ValueError(
                f"{len(leaves)} version leaves ({len(visible)} visible flags) from index {first}, "
                f"but the next is {self.next_idx}"
            )
        self.rows.extend(zip(count(first), repeat(LEAF_VERSION), leaves, visible, strict=False))

    async def begin(self, conn: AsyncConnection) -> None:
        """Read what :meth:`flush` needs of the Merkle tree: its edge tiles at :attr:`start`.

        Call it first in the transaction. A read on a connection waits for the
        inserts queued before it (see :class:`Inserts`); read now, the tiles
        are at hand when :meth:`flush` computes the new ones, which it does
        while the database thread is still inserting.
        """
        self._tree = MerkleTree(conn)
        await self._tree.load_edges(self.start)

    async def flush(
        self, conn: AsyncConnection, signer: CheckpointSigner, inserts: Inserts
    ) -> str | None:
        """Write the leaves, extend the Merkle tiles and sign the new checkpoint.

        The leaves' insert is queued on ``inserts`` (see :class:`Inserts`);
        the leaf hashes and tiles are computed while it and the inserts queued
        before it run.
        """
        if not self.rows:
            return None
        await inserts.add(log, LOG_COLUMNS, self.rows)
        if self._tree is None:
            await self.begin(conn)
        assert self._tree is not None
        tree = self._tree
        changed, root = tree.extend(self.start, [row[2] for row in self.rows])
        await conn.execute(update(log_head).where(log_head.c.id == 1).values(size=self.next_idx))
        await tree.write(changed)
        return await record_checkpoint(conn, signer, self.next_idx, root)
