"""Bulk inserts on the hot path: Core statements compiled once, rows passed as tuples.

SQLAlchemy's per-row parameter processing costs as much as SQLite's own work
for million-row pushes; the statements here are still built from the Core
tables (never hand-written SQL), compiled once per dialect, and handed to the
driver's ``executemany`` with plain tuples.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Table, insert
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.asyncio import AsyncConnection


@functools.cache
def _compiled_insert(dialect: Dialect, table: Table, columns: tuple[str, ...]) -> str:
    compiled = insert(table).compile(dialect=dialect, column_keys=list(columns))
    order = tuple(compiled.positiontup or ())
    if order != columns:
        raise AssertionError(f"{table.name}: positional order {order} != {columns}")
    return str(compiled)


async def insert_rows(
    conn: AsyncConnection, table: Table, columns: tuple[str, ...], rows: Sequence[tuple[Any, ...]]
) -> None:
    """INSERT ``rows`` (tuples in ``columns`` order) into ``table`` in one executemany.

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
    sql = _compiled_insert(conn.dialect, table, columns)
    await conn.exec_driver_sql(sql, list(rows))
