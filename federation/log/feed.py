"""Reading the feed: visible record versions in log order, behind an opaque cursor."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence

from sqlalchemy import and_, select
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


async def read_page(
    conn: AsyncConnection, position: int, limit: int
) -> Sequence[tuple[int, bytes]]:
    """Up to ``limit`` visible version leaves at or after ``position``, in log order."""
    rows = await conn.execute(
        select(log.c.idx, log.c.leaf)
        .where(and_(log.c.idx >= position, log.c.visible.is_(True), log.c.kind == LEAF_VERSION))
        .order_by(log.c.idx)
        .limit(limit)
    )
    return [(int(r.idx), bytes(r.leaf)) for r in rows]


async def log_size(conn: AsyncConnection) -> int:
    return int((await conn.execute(select(log_head.c.size))).scalar_one())
