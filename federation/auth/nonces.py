"""Where request nonces are remembered until their replay window has passed.

PostgreSQL servers run several workers (and hosts): nonces go in a table
they all share, one autocommit ``INSERT … ON CONFLICT DO NOTHING`` per
request that does not wait for the WAL flush (``synchronous_commit=off``
on those connections only): a crash of the database server may forget the
last fraction of a second of nonces. An SQLite server is one process, so it remembers nonces in
memory: the database write per request was most of a read request's cost
(a proof's p99 included). A replay is refused either way; and since every
write is an idempotent signed statement, the nonce guards reads above all.
"""

from __future__ import annotations

import heapq
import time
from typing import Protocol

from sqlalchemy import bindparam, delete, insert
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.exc import IntegrityError

from federation.protocol.problems import HashfedError, Problem
from federation.store.db import Database
from federation.store.schema import nonces

# About 1,600 signed requests a second sustained over a 10-minute window.
MAX_MEMORY_NONCES = 1_000_000


class NonceStore(Protocol):
    async def remember(self, key_id: str, nonce: str, expires_at: int) -> bool:
        """Record a nonce; False when it was already seen (a replay)."""
        ...

    async def expire(self) -> int:
        """Forget nonces whose window has passed; returns how many."""
        ...


_PG_INSERT = (
    pg_insert(nonces)
    .values(
        key_id=bindparam("key_id"), nonce=bindparam("nonce"), expires_at=bindparam("expires_at")
    )
    .on_conflict_do_nothing()
    .returning(nonces.c.key_id)
)


class DatabaseNonces:
    """Nonces in the ``nonces`` table, shared by every worker."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def remember(self, key_id: str, nonce: str, expires_at: int) -> bool:
        if not self.db.is_sqlite:
            # One autocommit round trip instead of BEGIN, INSERT, COMMIT (and a ping).
            added = await self.db.point.write(
                _PG_INSERT, key_id=key_id, nonce=nonce, expires_at=expires_at
            )
            return bool(added)
        try:
            async with self.db.writing() as conn:
                await conn.execute(
                    insert(nonces).values(key_id=key_id, nonce=nonce, expires_at=expires_at)
                )
        except IntegrityError:
            return False
        return True

    async def expire(self) -> int:
        async with self.db.writing() as conn:
            result = await conn.execute(
                delete(nonces).where(nonces.c.expires_at < int(time.time()))
            )
        return int(result.rowcount or 0)


class MemoryNonces:
    """Nonces in this process's memory (one SQLite server process).

    Expiry pops a heap ordered by expiry time, so a sweep costs what it
    removes: scanning a few hundred thousand live nonces once a minute held
    the event loop for tens of milliseconds.
    """

    def __init__(self, limit: int = MAX_MEMORY_NONCES) -> None:
        self.limit = limit
        self._seen: dict[tuple[str, str], int] = {}
        self._expiry: list[tuple[int, str, str]] = []

    async def remember(self, key_id: str, nonce: str, expires_at: int) -> bool:
        key = (key_id, nonce)
        if key in self._seen:
            return False
        if len(self._seen) >= self.limit and not await self.expire():
            raise HashfedError(
                Problem.RATE_LIMITED,
                "too many signed requests within the replay window; retry in a minute",
                retry_after=60,
            )
        self._seen[key] = expires_at
        heapq.heappush(self._expiry, (expires_at, key_id, nonce))
        return True

    async def expire(self) -> int:
        now = int(time.time())
        gone = 0
        while self._expiry and self._expiry[0][0] < now:
            _, key_id, nonce = heapq.heappop(self._expiry)
            del self._seen[(key_id, nonce)]
            gone += 1
        return gone


def nonce_store_for(db: Database) -> NonceStore:
    return MemoryNonces() if db.is_sqlite else DatabaseNonces(db)
