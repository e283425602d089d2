"""A transaction whose task is cancelled gives its locks back at once.

aiohttp cancels a request's handler when its client disconnects (with
``handler_cancellation``, as the test server runs); shutdown cancels the
handlers still running after ``shutdown_timeout``. A handler cancelled inside
``Database.appending()`` while the driver ran a query must not leave the log
locked. On SQLite it did: SQLAlchemy throws such a connection away without
closing the cancelled query's cursor, so the driver's close left a "zombie"
connection that kept its write lock until the garbage collector happened to
free that cursor; every later append waited the busy timeout (30 s) and
failed with "database is locked" in the meantime.
"""

from __future__ import annotations

import asyncio
import gc
import threading
from collections.abc import AsyncIterator, Iterator

import pytest
from sqlalchemy import text, update
from sqlalchemy.ext.asyncio import AsyncConnection

import federation.store.engine as engine_module
from federation.store.db import Database
from federation.store.migrate import upgrade_to_head
from federation.store.schema import log_head

BUSY_TIMEOUT_MS = 2_000  # instead of 30 s: a stuck lock fails the test quickly
PG_QUERY_S = 0.5


@pytest.fixture
def no_gc() -> Iterator[None]:
    """The garbage collector could free a leaked cursor by chance and hide a stuck lock."""
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


@pytest.fixture
async def db(
    database_url: str, monkeypatch: pytest.MonkeyPatch, no_gc: None
) -> AsyncIterator[Database]:
    monkeypatch.setattr(engine_module, "SQLITE_BUSY_TIMEOUT_MS", BUSY_TIMEOUT_MS)
    await asyncio.to_thread(upgrade_to_head, database_url)
    database = Database(database_url)
    yield database
    await database.close()


async def slow_select(
    db: Database, conn: AsyncConnection, running: asyncio.Event, release: threading.Event
) -> None:
    """A SELECT that returns a row once ``release`` is set; sets ``running`` when it runs."""
    if not db.is_sqlite:
        running.set()
        await conn.execute(text(f"SELECT size, pg_sleep({PG_QUERY_S}) FROM log_head"))
        return
    loop = asyncio.get_running_loop()

    def hold() -> int:  # runs in the driver's thread, inside the query
        loop.call_soon_threadsafe(running.set)
        release.wait(10)
        return 1

    raw = await conn.get_raw_connection()
    await raw.driver_connection.create_function("hold", 0, hold)  # type: ignore[union-attr]
    await conn.execute(text("SELECT size, hold() FROM log_head"))


async def cancel_mid_query(db: Database, in_append: bool) -> None:
    """Run a transaction that wrote, and cancel its task while the driver runs a query."""
    running = asyncio.Event()
    release = threading.Event()

    async def transaction() -> None:
        if in_append:
            async with db.appending() as (conn, size):
                await conn.execute(update(log_head).values(size=size + 100))
                await slow_select(db, conn, running, release)
        else:
            async with db.writing() as conn:
                await conn.execute(update(log_head).values(size=log_head.c.size + 100))
                await slow_select(db, conn, running, release)

    task = asyncio.create_task(transaction())
    async with asyncio.timeout(BUSY_TIMEOUT_MS / 1000 * 3):
        await asyncio.wait(
            [task, asyncio.create_task(running.wait())], return_when=asyncio.FIRST_COMPLETED
        )
    if task.done():
        task.result()  # it failed before its query ran: say why
        pytest.fail("the transaction ended before it could be cancelled")
    if not db.is_sqlite:
        await asyncio.sleep(PG_QUERY_S / 5)  # into pg_sleep
    task.cancel()
    release.set()
    with pytest.raises(asyncio.CancelledError):
        await task


async def append_one(db: Database) -> int:
    async with asyncio.timeout(BUSY_TIMEOUT_MS / 1000 * 3), db.appending() as (conn, size):
        await conn.execute(update(log_head).values(size=size + 1))
        return size + 1


@pytest.mark.parametrize("in_append", [True, False], ids=["appending", "writing"])
async def test_a_transaction_cancelled_mid_query_leaves_the_log_free_at_once(
    db: Database, in_append: bool
) -> None:
    loop = asyncio.get_running_loop()
    for size in (1, 2, 3):
        await cancel_mid_query(db, in_append)
        started = loop.time()
        assert await append_one(db) == size  # nothing the cancelled transaction wrote was kept
        assert loop.time() - started < BUSY_TIMEOUT_MS / 1000 / 2, "the append waited for a lock"
    assert db.engine.pool.checkedout() == 0  # type: ignore[attr-defined]
