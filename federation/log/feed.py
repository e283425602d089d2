"""Reading the feed: visible record versions in log order, behind an opaque cursor."""

from __future__ import annotations

import base64
import binascii
import functools
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Integer, and_, bindparam, select
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.asyncio import AsyncConnection

from federation.protocol.problems import HashfedError, Problem
from federation.store.schema import LEAF_VERSION, log, log_head

CURSOR_PREFIX = b"hf1:"
MAX_PAGE = 10_000
DEFAULT_PAGE = 1_000
STREAM_CHUNK = 5_000


def encode_cursor(position: int) -> str:
    """The cursor for "every leaf before ``position`` has been seen"."""
    return base64.urlsafe_b64encode(CURSOR_PREFIX + str(position).encode()).decode().rstrip("=")


def decode_cursor(cursor: str | None) -> int:
    """The position a cursor stands for; an absent cursor is the start of the log."""
    if not cursor:
        return 0
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
    except (binascii.Error, ValueError):
        raw = b""
    digits = raw[len(CURSOR_PREFIX) :]
    if not raw.startswith(CURSOR_PREFIX) or not digits.isdigit() or len(digits) > 18:
        raise HashfedError(
            Problem.MALFORMED_REQUEST,
            "'after' is not a cursor this server issued; omit it to start from the beginning",
        )
    return int(digits)


# No log reaches this index: the default upper bound of a read.
NO_END = 2**62

_PAGE = (
    select(log.c.idx, log.c.leaf)
    .where(
        and_(
            log.c.idx >= bindparam("position"),
            log.c.idx < bindparam("end"),
            log.c.visible.is_(True),
            log.c.kind == LEAF_VERSION,
        )
    )
    .order_by(log.c.idx)
    .limit(bindparam("limit", type_=Integer))
)

_LEAVES = (
    select(log.c.idx, log.c.leaf)
    .where(and_(log.c.idx >= bindparam("position"), log.c.idx < bindparam("end")))
    .order_by(log.c.idx)
    .limit(bindparam("limit", type_=Integer))
)


@functools.cache
def _compiled(query: Any, dialect: Dialect) -> tuple[str, tuple[str, ...], dict[str, Any]]:
    compiled = query.compile(dialect=dialect)
    return str(compiled), tuple(compiled.positiontup or ()), dict(compiled.params)


async def driver_rows(conn: AsyncConnection, query: Any, **values: Any) -> Sequence[Any]:
    """The rows of a Core ``query`` (a module constant: it is compiled once) as the
    driver returns them: SQLAlchemy's row processing doubled the server's cost per
    leaf. Columns keep the driver's types (SQLite booleans are 0 and 1)."""
    sql, names, constants = _compiled(query, conn.dialect)
    values = {**constants, **values}
    result = await conn.exec_driver_sql(sql, tuple(values[n] for n in names))
    return result.all()


async def _read(
    conn: AsyncConnection, query: Any, position: int, end: int, limit: int
) -> list[tuple[int, bytes]]:
    rows = await driver_rows(conn, query, position=position, end=end, limit=limit)
    return [(int(row[0]), bytes(row[1])) for row in rows]


async def read_page(
    conn: AsyncConnection, position: int, limit: int, end: int | None = None
) -> Sequence[tuple[int, bytes]]:
    """Up to ``limit`` visible version leaves in ``[position, end)``, in log order.

    The hot read of every pull. ``end`` (default: none) pins the feed to a tree
    size, as an auditor comparing it with one checkpoint does.
    """
    return await _read(conn, _PAGE, position, NO_END if end is None else end, limit)


async def read_leaves(
    conn: AsyncConnection, position: int, end: int, limit: int
) -> list[tuple[int, bytes]]:
    """Up to ``limit`` leaves (of any kind) in ``[position, end)``, in log order."""
    return await _read(conn, _LEAVES, position, end, limit)


async def log_size(conn: AsyncConnection) -> int:
    return int((await conn.execute(select(log_head.c.size))).scalar_one())


# The log's size and the identities counter: the one read every signed request makes.
HEAD = select(log_head.c.size, log_head.c.identities).where(log_head.c.id == 1)
