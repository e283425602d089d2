"""Point reads: the request path's one-statement reads, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import update

from federation.auth.nonces import DatabaseNonces
from federation.log.feed import HEAD
from federation.store.db import Database
from federation.store.migrate import upgrade_to_head
from federation.store.schema import log_head


async def test_a_point_read_sees_every_commit(db: Database) -> None:
    assert await db.point.first(HEAD) == (0, 0)
    async with db.writing() as conn:
        await conn.execute(update(log_head).values(size=7, identities=3))
    assert await db.point.first(HEAD) == (7, 3)
    if db.is_sqlite:
        assert db.point.on_loop == 2 and db.point.via_engine == 0
    else:
        assert db.point.via_engine == 2


@pytest.fixture
async def sqlite_db(tmp_path: Path) -> AsyncIterator[Database]:
    """Only SQLite serves point reads on the event loop, so only it has a fallback."""
    url = f"sqlite+aiosqlite:///{tmp_path / 'hashfed.db'}"
    await asyncio.to_thread(upgrade_to_head, url)
    database = Database(url)
    yield database
    await database.close()


async def test_sqlite_falls_back_to_the_engine_when_busy(
    sqlite_db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = sqlite_db

    def busy() -> sqlite3.Connection:
        raise sqlite3.OperationalError("database is locked")

    monkeypatch.setattr(db.point, "_sqlite", busy)
    assert await db.point.first(HEAD) == (0, 0)
    assert db.point.via_engine == 1 and db.point.on_loop == 0


async def test_shared_nonces_refuse_a_replay(db: Database) -> None:
    nonces = DatabaseNonces(db)
    later = int(time.time()) + 600
    assert await nonces.remember("k", "n1", later)
    assert not await nonces.remember("k", "n1", later)
    assert await nonces.remember("k2", "n1", later)
    other = Database(db.url)  # another worker
    try:
        assert not await DatabaseNonces(other).remember("k", "n1", later)
    finally:
        await other.close()
