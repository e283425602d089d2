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


_PAGE = (
    select(log.c.idx, log.c.leaf)
    .where(
        and_(
            log.c.idx >= bindparam("position"),
            log.c.visible.is_(True),
            log.c.kind == LEAF_VERSION,
        )
    )
    .order_by(log.c.idx)
    .limit(bindparam("limit", type_=Integer))
)


@functools.cache
def _page_sql(dialect: Dialect) -> tuple[str, tuple[str, ...], dict[str, Any]]:
    compiled = _PAGE.compile(dialect=dialect)
    return str(compiled), tuple(compiled.positiontup or ()), dict(compiled.params)


async def read_page(
    conn: AsyncConnection, position: int, limit: int
) -> Sequence[tuple[int, bytes]]:
    """Up to ``limit`` visible version leaves at or after ``position``, in log order.

    The hot read of every pull: the Core query is compiled once and its rows
    taken from the driver as they are (SQLAlchemy's row processing doubled
    the server's cost per version).
    """
    sql, names, constants = _page_sql(conn.dialect)
    values = {**constants, "position": position, "limit": limit}
    result = await conn.exec_driver_sql(sql, tuple(values[n] for n in names))
    rows: Sequence[Any] = result.all()
    return [(int(row[0]), bytes(row[1])) for row in rows]


async def log_size(conn: AsyncConnection) -> int:
    return int((await conn.execute(select(log_head.c.size))).scalar_one())


# The log's size and the identities counter: the one read every signed request makes.
HEAD = select(log_head.c.size, log_head.c.identities).where(log_head.c.id == 1)
