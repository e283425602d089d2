"""Signed checkpoints (C2SP tlog-checkpoint): the server's commitment to the log's state."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import bindparam, insert, select
from sqlalchemy.ext.asyncio import AsyncConnection

from federation.protocol.keys import load_private_key
from federation.protocol.note import Checkpoint, format_checkpoint, format_verifier_key, sign_note
from federation.protocol.problems import HashfedError, Problem
from federation.store.reads import PointReads
from federation.store.schema import checkpoints


@dataclass(frozen=True)
class CheckpointSigner:
    """Signs checkpoints with the log key; the key name is the federation's origin."""

    origin: str
    private_key: Ed25519PrivateKey

    @classmethod
    def from_file(cls, origin: str, path: Path) -> CheckpointSigner:
        if not path.exists():
            raise RuntimeError(
                f"log signing key {path} is missing; run 'hashfed server init' first"
            )
        return cls(origin, load_private_key(path))

    @property
    def verifier_key(self) -> str:
        """The ``name+hash+key`` string auditors and members pin out of band."""
        return format_verifier_key(self.origin, self.private_key.public_key())

    def sign(self, size: int, root: bytes) -> str:
        return sign_note(
            format_checkpoint(Checkpoint(self.origin, size, root)), self.origin, self.private_key
        )


async def record_checkpoint(
    conn: AsyncConnection, signer: CheckpointSigner, size: int, root: bytes
) -> str:
    """Sign and store the checkpoint for ``size`` (inside the append transaction)."""
    note = signer.sign(size, root)
    await conn.execute(
        insert(checkpoints).values(
            size=size, root_hash=root, note=note, created_at=int(time.time())
        )
    )
    return note


LATEST = select(checkpoints.c.note).order_by(checkpoints.c.size.desc()).limit(1)
AT_SIZE = select(checkpoints.c.note).where(checkpoints.c.size == bindparam("size"))


async def latest_checkpoint(point: PointReads) -> str:
    row = await point.first(LATEST)
    if row is None:
        raise HashfedError(Problem.NOT_FOUND, "the log has no checkpoint yet")
    return str(row[0])


async def checkpoint_at(point: PointReads, size: int) -> str:
    row = await point.first(AT_SIZE, size=size)
    if row is None:
        raise HashfedError(Problem.NOT_FOUND, f"no checkpoint was signed at size {size}")
    return str(row[0])
