"""Point reads on the request path: one indexed row (or a few), no transaction.

Authentication reads the log head (size and identities counter) and, when its
cache misses, a key; a proof reads a tile or two. Through the engine each of
these costs a connection checkout, a reset on return and, on SQLite, several
hops to aiosqlite's thread and back per statement: on a busy machine every
hop is a chance to wait for a core, which is what set the p99 of a proof.

- **SQLite**: a private connection of this process, used on the event loop
  itself. These are primary-key lookups in pages the OS already caches
  (tens of microseconds), cheaper than the hops they replace. It is
  ``query_only`` and has no busy timeout: should SQLite ever answer "busy"
  (WAL readers almost never wait), the read goes through the engine instead,
  which waits in its own thread.
- **PostgreSQL**: a small pool of autocommit connections of its own (asyncpg
  runs on the event loop already): one round trip per read, where the
  engine's connections add a ping on checkout, a ``BEGIN`` and a
  ``ROLLBACK``. There is no ping, so a read on a connection the server
  dropped (a restart) is retried once on a fresh one.

Each call is a single statement, so it sees one committed state; callers
that combine several rely on the log only growing (see ``log_head``).
"""

from __future__ import annotations

import functools
import sqlite3
from typing import Any

from sqlalchemy import Select, make_url
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.expression import ClauseElement

# The SQLite connection's own page cache; the file is also memory-mapped, so
# pages are shared with the engine's connections through the OS.
POINT_CACHE_KIB = 16 * 1024
POINT_MMAP_BYTES = 1024 * 1024 * 1024
# PostgreSQL: point-read connections per process, on top of the engine's. Kept
# open up to POINT_POOL_SIZE: an overflow connection is closed when returned,
# and opening one per request (a backend fork) cost more than the read.
POINT_POOL_SIZE = 8
POINT_POOL_OVERFLOW = 4


@functools.cache
def _compiled(
    query: ClauseElement, dialect: Dialect
) -> tuple[str, tuple[str, ...], dict[str, Any]]:
    """SQL text, parameter order and the query's own literal values."""
    compiled = query.compile(dialect=dialect)
    assert isinstance(compiled, SQLCompiler)
    return str(compiled), tuple(compiled.positiontup or ()), dict(compiled.params)


class PointReads:
    """Runs small compiled ``SELECT``s with named parameters; returns plain tuples."""

    def __init__(self, url: str, engine: AsyncEngine) -> None:
        self.engine = engine
        self._path: str | None = None
        self._conn: sqlite3.Connection | None = None
        self._autocommit: AsyncEngine | None = None
        if url.startswith("sqlite"):
            database = make_url(url).database
            if database and database != ":memory:" and not database.startswith("file:"):
                self._path = database
        else:
            self._autocommit = create_async_engine(
                url,
                isolation_level="AUTOCOMMIT",
                pool_size=POINT_POOL_SIZE,
                max_overflow=POINT_POOL_OVERFLOW,
                pool_pre_ping=False,
                # The only writes made here are replay-protection nonces (see
                # :meth:`write`): they need not wait for the WAL flush.
                connect_args={"server_settings": {"synchronous_commit": "off"}},
            )
        self.on_loop = 0  # reads served on the event loop (SQLite)
        self.via_engine = 0

    def _sqlite(self) -> sqlite3.Connection:
        if self._conn is None:
            assert self._path is not None
            conn = sqlite3.connect(self._path, isolation_level=None, timeout=0)
            for pragma in (
                "PRAGMA query_only=ON",
                "PRAGMA busy_timeout=0",
                f"PRAGMA cache_size=-{POINT_CACHE_KIB}",
                f"PRAGMA mmap_size={POINT_MMAP_BYTES}",
            ):
                conn.execute(pragma)
            self._conn = conn
        return self._conn

    async def all(self, query: Select[Any], **params: Any) -> list[tuple[Any, ...]]:
        """Every row of ``query`` with ``params`` bound."""
        sql, names, constants = _compiled(query, self.engine.dialect)
        values = tuple(params[n] if n in params else constants[n] for n in names)
        if self._path is not None:
            try:
                rows = self._sqlite().execute(sql, values).fetchall()
            except sqlite3.OperationalError:
                pass  # busy, most likely: the engine's connections wait for it
            else:
                self.on_loop += 1
                return rows
        self.via_engine += 1
        if self._autocommit is None:
            return await self._read(self.engine, sql, values)
        try:
            return await self._read(self._autocommit, sql, values)
        except DBAPIError as exc:
            if not exc.connection_invalidated:
                raise
            return await self._read(self._autocommit, sql, values)

    async def write(self, statement: ClauseElement, **params: Any) -> list[tuple[Any, ...]]:
        """One statement that commits by itself, without waiting for the WAL flush.

        PostgreSQL only. For the replay-protection nonce: a crash of the
        database server can lose the last fraction of a second of nonces,
        which could let a request captured in that instant be replayed
        within its 5-minute window; every write is an idempotent signed
        statement anyway.
        """
        if self._autocommit is None:
            raise RuntimeError("autocommit writes are for PostgreSQL")
        sql, names, constants = _compiled(statement, self._autocommit.dialect)
        values = tuple(params[n] if n in params else constants[n] for n in names)
        # Not retried: the first attempt may have committed before the connection dropped.
        return await self._read(self._autocommit, sql, values)

    @staticmethod
    async def _read(
        engine: AsyncEngine, sql: str, values: tuple[Any, ...]
    ) -> list[tuple[Any, ...]]:
        async with engine.connect() as conn:
            result = await conn.exec_driver_sql(sql, values)
            return [tuple(row) for row in result.all()]

    async def first(self, query: Select[Any], **params: Any) -> tuple[Any, ...] | None:
        rows = await self.all(query, **params)
        return rows[0] if rows else None

    async def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        if self._autocommit is not None:
            await self._autocommit.dispose()
