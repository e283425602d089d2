"""The database handle: an engine plus the one serialised append path."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import orjson
from sqlalchemy import ColumnElement, String, any_, bindparam, func, select
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from federation.store.engine import create_engine, is_sqlite
from federation.store.reads import PointReads
from federation.store.schema import log_head

T = TypeVar("T")


def chunks(items: Sequence[T], size: int) -> Iterable[Sequence[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def one_of(conn: AsyncConnection, column: ColumnElement[str], values: Sequence[str]) -> Any:
    """``column IN values`` as one bound parameter, however many values there are.

    SQLite gets the values as one JSON array read by ``json_each``, PostgreSQL
    as one text array: a fixed statement, no per-value parameters to expand
    and bind, and (on SQLite) one driver step that runs without the GIL.
    """
    if conn.dialect.name == "postgresql":
        return column == any_(bindparam(None, list(values), type_=ARRAY(String)))
    listed = func.json_each(bindparam(None, orjson.dumps(list(values)).decode(), type_=String))
    return column.in_(select(listed.table_valued("value").c.value))


class Database:
    """Owns the engine. Every write to the log goes through :meth:`appending`."""

    def __init__(self, url: str, **engine_kwargs: Any) -> None:
        self.url = url
        self.engine: AsyncEngine = create_engine(url, **engine_kwargs)
        self.is_sqlite = is_sqlite(url)
        # In-process serialisation of appenders; across processes (PostgreSQL
        # workers) the row lock on log_head does the same job.
        self._append_lock = asyncio.Lock()
        # Single-statement reads on the request path (authentication, proofs).
        self.point = PointReads(url, self.engine)

    @asynccontextmanager
    async def reading(self) -> AsyncIterator[AsyncConnection]:
        async with self.engine.connect() as conn:
            yield conn

    @asynccontextmanager
    async def writing(self) -> AsyncIterator[AsyncConnection]:
        """A transaction that does not touch the log (e.g. the nonce store)."""
        async with self.engine.begin() as conn:
            yield conn

    @asynccontextmanager
    async def appending(self) -> AsyncIterator[tuple[AsyncConnection, int]]:
        """A transaction holding the log's append lock; yields (conn, log size).

        Sequence numbers handed out inside are committed before the lock is
        released, so they become visible in the order they were assigned: a
        reader paging by ``idx`` never sees a later leaf before an earlier one.
        """
        async with self._append_lock, self.engine.begin() as conn:
            if self.is_sqlite:
                # SQLite ignores FOR UPDATE and the driver defers BEGIN to the first
                # write: take the write lock now, so appenders in other processes
                # on the same file wait here instead of reading a stale size.
                await conn.exec_driver_sql("BEGIN IMMEDIATE")
            size = (
                await conn.execute(
                    select(log_head.c.size).where(log_head.c.id == 1).with_for_update()
                )
            ).scalar_one()
            yield conn, int(size)

    async def close(self) -> None:
        await self.point.close()
        await self.engine.dispose()
