"""Bulk inserts on the hot path: Core statements compiled once, rows passed as tuples.

SQLAlchemy's per-row parameter processing costs as much as SQLite's own work
for million-row pushes; the statements here are still built from the Core
tables (never hand-written SQL), compiled once per dialect, and handed to the
driver's ``executemany`` with plain tuples.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Iterator, Sequence
from itertools import chain
from types import TracebackType
from typing import Any

from sqlalchemy import Table, insert
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.asyncio import AsyncConnection

log = logging.getLogger("hashfed.store")

# Rows per multi-row INSERT on SQLite: one statement step inserts them all.
# SQLite allows 32,766 bound parameters; the widest table here has 12 columns.
SQLITE_ROWS_PER_INSERT = 1_000


@functools.cache
def _compiled_insert(dialect: Dialect, table: Table, columns: tuple[str, ...]) -> str:
    compiled = insert(table).compile(dialect=dialect, column_keys=list(columns))
    order = tuple(compiled.positiontup or ())
    if order != columns:
        raise AssertionError(f"{table.name}: positional order {order} != {columns}")
    return str(compiled)


@functools.cache
def _compiled_multirow(dialect: Dialect, table: Table, columns: tuple[str, ...], n: int) -> str:
    """``INSERT … VALUES (…), (…), …`` for ``n`` rows, from the single-row statement."""
    single = _compiled_insert(dialect, table, columns)
    head, _, row = single.rpartition(" VALUES ")
    if row != "(" + ", ".join("?" * len(columns)) + ")":
        raise AssertionError(f"{table.name}: unexpected insert {single!r}")
    return f"{head} VALUES {', '.join([row] * n)}"


async def insert_rows(
    conn: AsyncConnection, table: Table, columns: tuple[str, ...], rows: Sequence[Sequence[Any]]
) -> None:
    """INSERT ``rows`` (tuples or lists in ``columns`` order) into ``table``.

    On PostgreSQL the rows go through COPY instead (about 40 % less server
    and database CPU on pushes). Callers are inside a transaction that has
    already run a statement, so the COPY is part of that transaction.
    """
    if not rows:
        return
    if conn.dialect.name == "postgresql":
        raw = await conn.get_raw_connection()
        driver: Any = raw.driver_connection  # an asyncpg connection
        await driver.copy_records_to_table(table.name, records=rows, columns=list(columns))
        return
    # Multi-row statements, not executemany: Python's sqlite3 takes the GIL back
    # for every row of an executemany, so the event loop and the database
    # thread take turns. One step per thousand rows lets them run side by side.
    # The rest goes in power-of-two parts, so that a table has at most eleven
    # distinct statements to compile and cache, whatever the batch sizes.
    for sql, params in _multirow_statements(conn.dialect, table, columns, rows):
        await conn.exec_driver_sql(sql, params)


class Inserts:
    """Bulk INSERTs queued on SQLite's database thread, awaited together.

    Each ``await`` of a statement is a round trip through the event loop: the
    database thread finishes the statement, then waits for the loop to hand
    it the next one. When the loop is busy with other requests, those waits
    add up, inside the append lock. On SQLite, :meth:`add` queues every
    statement of a bulk insert on the connection's thread at once and returns
    as soon as they are queued, in order: the thread runs them back to back,
    and anything the caller executes afterwards on the connection (through
    SQLAlchemy or not) runs after them and sees their rows. On PostgreSQL it
    inserts at once (asyncpg runs one operation at a time on a connection).

    Leave the ``async with`` block before the transaction commits: it waits
    for every queued statement and raises the first error, so a failed
    insert fails the transaction. If the block itself raises, the statements
    still finish (their errors dropped) before the exception goes on to roll
    the transaction back.
    """

    def __init__(self, conn: AsyncConnection) -> None:
        self.conn = conn
        self._queued: list[asyncio.Future[Any]] = []

    async def __aenter__(self) -> Inserts:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            await self.wait()
            return
        queued, self._queued = self._queued, []
        for result in await asyncio.gather(*queued, return_exceptions=True):
            if isinstance(result, BaseException):  # the block's own error goes on; say this one
                log.warning("a queued insert failed while its transaction was failing: %r", result)

    async def add(
        self, table: Table, columns: tuple[str, ...], rows: Sequence[Sequence[Any]]
    ) -> None:
        """Queue the INSERT of ``rows`` (in ``columns`` order) into ``table``."""
        if not rows:
            return
        if self.conn.dialect.name != "sqlite":
            await insert_rows(self.conn, table, columns, rows)
            return
        raw = await self.conn.get_raw_connection()
        driver: Any = raw.driver_connection  # aiosqlite: one thread, one FIFO queue
        for sql, params in _multirow_statements(self.conn.dialect, table, columns, rows):
            self._queued.append(asyncio.ensure_future(driver.execute_fetchall(sql, params)))
        # Each task queues its statement on the driver's thread in its first
        # step, and tasks take their first steps in the order they were created,
        # before this coroutine resumes: from here on, the statements are queued.
        await asyncio.sleep(0)

    async def wait(self) -> None:
        """Wait for every queued statement; raises the first one's error, if any failed."""
        queued, self._queued = self._queued, []
        for result in await asyncio.gather(*queued, return_exceptions=True):
            if isinstance(result, BaseException):
                raise result


def _multirow_statements(
    dialect: Dialect, table: Table, columns: tuple[str, ...], rows: Sequence[Sequence[Any]]
) -> Iterator[tuple[str, tuple[Any, ...]]]:
    """The multi-row INSERTs of ``rows`` on SQLite, in order: (SQL, flat parameters) each."""
    start = 0
    for size in _parts(len(rows)):
        yield (
            _compiled_multirow(dialect, table, columns, size),
            tuple(chain.from_iterable(rows[start : start + size])),
        )
        start += size


def _parts(count: int) -> list[int]:
    """``count`` as full statements of :data:`SQLITE_ROWS_PER_INSERT`, then powers of two."""
    full, rest = divmod(count, SQLITE_ROWS_PER_INSERT)
    return [SQLITE_ROWS_PER_INSERT] * full + [
        1 << b for b in reversed(range(rest.bit_length())) if rest >> b & 1
    ]
