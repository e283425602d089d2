"""Async engines: SQLite in WAL mode for the embedded default, asyncpg for production."""

from __future__ import annotations

import asyncio
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import ExceptionContext
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

SQLITE_BUSY_TIMEOUT_MS = 30_000
# Random-key indexes (record ids) thrash SQLite's 2 MiB default page cache at
# a million rows; a larger cache (per pooled connection, so kept moderate) and
# mmap (shared through the OS page cache) keep pushes flat as the log grows.
SQLITE_CACHE_KIB = 64 * 1024
SQLITE_MMAP_BYTES = 1024 * 1024 * 1024
# 16 KiB pages for new databases (SQLite's default is 4 KiB): inserts of random
# record ids split and rewrite fewer pages, about a third less SQLite time per
# pushed record. An existing database keeps the page size it was created with.
SQLITE_PAGE_SIZE = 16 * 1024
# Checkpoint the WAL every ~80 MB instead of ~4 MB: halves commit time on pushes.
SQLITE_WAL_AUTOCHECKPOINT_PAGES = 80 * 1024 * 1024 // SQLITE_PAGE_SIZE
# Connections are kept (each owns a thread and a warm page cache); opening one
# per request threw both away.
SQLITE_POOL_SIZE = 4
SQLITE_POOL_OVERFLOW = 4


def is_sqlite(url: str) -> bool:
    return url.startswith("sqlite")


def _keep_cancelled_sqlite_connection(context: ExceptionContext) -> None:
    """A task cancelled in a query on SQLite: close the cursor and roll back, as for any error.

    SQLAlchemy treats a cancellation like a lost connection: it invalidates
    the connection without closing the query's cursor. aiosqlite then closes
    the SQLite connection under a statement that is still open, which only
    makes it a "zombie" that keeps its transaction, and so the database's
    write lock, until the garbage collector frees the cursor: every append
    in the meantime waits the busy timeout and fails with "database is
    locked". A handler cancelled inside ``Database.appending()`` (a client
    that disconnects, with aiohttp's ``handler_cancellation``) wedged the log
    that way. Nothing is lost on the wire here: aiosqlite runs the query in
    its own thread and queues the cursor's close and the rollback after it,
    so the connection stays usable and goes back to the pool.
    """
    if isinstance(context.original_exception, asyncio.CancelledError):
        context.is_disconnect = False


def create_engine(url: str, **kwargs: Any) -> AsyncEngine:
    """An async engine for ``url``, tuned for its backend."""
    if is_sqlite(url):
        kwargs.setdefault("pool_size", SQLITE_POOL_SIZE)
        kwargs.setdefault("max_overflow", SQLITE_POOL_OVERFLOW)
        engine = create_async_engine(url, **kwargs)

        @event.listens_for(engine.sync_engine, "connect")
        def _pragmas(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute(f"PRAGMA page_size={SQLITE_PAGE_SIZE}")  # only before the first table
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
            cursor.execute(f"PRAGMA cache_size=-{SQLITE_CACHE_KIB}")
            cursor.execute(f"PRAGMA mmap_size={SQLITE_MMAP_BYTES}")
            cursor.execute("PRAGMA temp_store=MEMORY")
            cursor.execute(f"PRAGMA wal_autocheckpoint={SQLITE_WAL_AUTOCHECKPOINT_PAGES}")
            cursor.close()

        event.listen(engine.sync_engine, "handle_error", _keep_cancelled_sqlite_connection)
        return engine
    kwargs.setdefault("pool_size", 10)
    kwargs.setdefault("max_overflow", 10)
    kwargs.setdefault("pool_pre_ping", True)
    return create_async_engine(url, **kwargs)
