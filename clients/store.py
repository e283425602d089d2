"""The member's local copy of the federation: a SQLite database that ``hashfed pull`` fills.

One row per record holds the record's head version as the feed delivered it,
tombstones included (a withdrawn or retracted record stays, with that state,
so a later export or match knows to drop it). The ``meta`` table binds the
store to one server and organisation and holds the feed cursor, which is
written in the same transaction as the versions it covers: a pull that stops
anywhere resumes exactly after the last committed version.

The row is narrow: the columns something looks records up or filters them
by (log index, record id, signal type and value, state) and the exact leaf
bytes, which hold everything else (labels, contributors, version, cause,
time, disputed). It is keyed by the log index, so a pull appends rows in log
order instead of inserting them at random record-id positions, and "what
changed since log index N" (the matcher's refresh, the inclusion spot
check) is a range read; a unique index finds a record by id.

The schema is the client's own (Alembic owns only the server's): a
``schema_version`` in ``meta`` and forward migrations in :data:`MIGRATIONS`.
"""

from __future__ import annotations

import contextlib
import csv
import fcntl
import os
import sqlite3
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import chain
from pathlib import Path
from typing import IO, Any, NamedTuple

import numpy as np
import numpy.typing as npt
import orjson

SCHEMA_VERSION = 2
BUSY_TIMEOUT_MS = 10_000  # readers (status, export) may briefly wait for a pull's commit
LOCK_SUFFIX = ".lock"
CACHE_KIB = 128 * 1024  # SQLite page cache per connection
# Page size of a new store (an existing one keeps its own): a pull appends rows
# of ~500 bytes, and bigger pages mean fewer pages to log, checksum and copy.
PAGE_BYTES = 16 * 1024

# Record states (the server's governance rules). Consumers are shown approved
# versions and tombstones only; pending and rejected ones never reach the feed.
STATES = frozenset({"pending", "approved", "rejected", "withdrawn", "retracted"})
# No member stands behind a tombstone any more: it stays as a row, so the change
# reaches every consumer, and is left out of exports unless asked for.
TOMBSTONE_STATES = frozenset({"withdrawn", "retracted"})

# Meta keys.
META_SCHEMA = "schema_version"
META_SERVER = "server"
META_ORG = "org"
META_CURSOR = "cursor"
META_LAST_SYNC = "last_sync"
META_LOG_SIZE = "last_log_size"

# MIGRATIONS[n - 1] takes a store from schema n - 1 to schema n. Append, never edit.
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """
        CREATE TABLE records (
            id TEXT PRIMARY KEY,
            signal_type TEXT NOT NULL,
            value TEXT NOT NULL,
            state TEXT NOT NULL,
            labels TEXT NOT NULL,        -- JSON list of label ids
            contributors TEXT NOT NULL,  -- JSON list of organisation ids
            version INTEGER NOT NULL,
            idx INTEGER NOT NULL,        -- log index of the head version
            cause TEXT NOT NULL,         -- id of the statement that caused it
            time INTEGER NOT NULL,       -- unix seconds
            leaf BLOB NOT NULL           -- exact log leaf of the head version
        )
        """,
        "CREATE INDEX ix_records_signal ON records (signal_type, value)",
        # Records by (signal_type, state), kept by apply() in the same
        # transaction, so status needs no scan of millions of rows.
        """
        CREATE TABLE counts (
            signal_type TEXT NOT NULL,
            state TEXT NOT NULL,
            records INTEGER NOT NULL,
            PRIMARY KEY (signal_type, state)
        )
        """,
    ),
    # 2: the narrow row keyed by log index. Labels, contributors, version,
    # cause and time are read from the leaf, which always held them. Nothing
    # looked records up by (signal_type, value): matching finds them by id.
    (
        """
        CREATE TABLE records_v2 (
            idx INTEGER PRIMARY KEY,     -- log index of the head version
            id TEXT NOT NULL,            -- record id
            signal_type TEXT NOT NULL,
            value TEXT NOT NULL,
            state TEXT NOT NULL,
            leaf BLOB NOT NULL           -- exact log leaf of the head version
        )
        """,
        """
        INSERT INTO records_v2 (idx, id, signal_type, value, state, leaf)
        SELECT idx, id, signal_type, value, state, leaf FROM records ORDER BY idx
        """,
        "DROP TABLE records",  # and its index ix_records_signal
        "ALTER TABLE records_v2 RENAME TO records",
        "CREATE UNIQUE INDEX ix_records_id ON records (id)",
    ),
)

# Finding a record by id (matching, verify, a pull's updates). A bulk load into
# an empty store goes without it and builds it at the end: sorting once is far
# cheaper than inserting random record ids into a B-tree row by row.
_CREATE_ID_INDEX = "CREATE UNIQUE INDEX IF NOT EXISTS ix_records_id ON records (id)"
_INSERT = "INSERT INTO records (idx, id, signal_type, value, state, leaf) VALUES (?, ?, ?, ?, ?, ?)"
_DELETE = "DELETE FROM records WHERE idx = ?"
# Rows per multi-row INSERT: one statement step writes them all without the
# GIL, so the pull's checks on the event loop go on meanwhile. executemany
# takes the GIL back for every row and the two threads take turns.
_INSERT_ROWS = 1_000
_INSERT_MANY = _INSERT.replace(
    "VALUES (?, ?, ?, ?, ?, ?)", "VALUES " + ", ".join(["(?, ?, ?, ?, ?, ?)"] * _INSERT_ROWS)
)
_HEADS = "SELECT id, idx, state FROM records WHERE id IN (SELECT value FROM json_each(?))"
_COLUMNS = "SELECT id, signal_type, value, state, idx, leaf FROM records"
_COUNT = """
INSERT INTO counts (signal_type, state, records) VALUES (?, ?, ?)
ON CONFLICT (signal_type, state) DO UPDATE SET records = records + excluded.records
"""

CSV_COLUMNS = (
    "signal_type",
    "value",
    "labels",
    "state",
    "record",
    "version",
    "contributors",
    "disputed",
)
CSV_LIST_SEPARATOR = ";"
EXPORT_FORMATS = ("csv", "jsonl")


def _insert_records(conn: sqlite3.Connection, rows: list[tuple[Any, ...]]) -> None:
    """INSERT ``rows`` in statements of :data:`_INSERT_ROWS` rows, the rest one by one."""
    full = len(rows) - len(rows) % _INSERT_ROWS
    for start in range(0, full, _INSERT_ROWS):
        conn.execute(_INSERT_MANY, list(chain.from_iterable(rows[start : start + _INSERT_ROWS])))
    if full < len(rows):
        conn.executemany(_INSERT, rows[full:])


class StoreError(Exception):
    """The local store cannot be used as asked; the message says why and what to do."""


class StoreLocked(StoreError):
    """Another process holds the store's lock (a pull is running)."""


class StoreBoundElsewhere(StoreError):
    """The store holds a copy of another server or organisation."""


class StoreMissing(StoreError):
    """No store exists at the path yet."""


class RecordVersion(NamedTuple):
    """One record version as the feed delivered it (validated), ready to apply.

    A streamed pull collects versions as :class:`VersionBatch` columns
    instead; JSON pages and tests build these.
    """

    idx: int  # log index
    record: str
    version: int
    signal_type: str
    value: str
    state: str
    labels: tuple[str, ...]
    contributors: tuple[str, ...]
    cause: str
    time: int
    leaf: bytes


@dataclass(slots=True)
class VersionBatch:
    """Validated record versions in log order, as columns (what :meth:`LocalStore.apply` writes).

    Columns of strings, integers and bytes: a streamed pull extends them a
    whole chunk of lines at a time, and the garbage collector need not track
    their contents. ``leaf`` holds each version's exact log leaf; every other
    member of the version (labels, contributors, ...) is read from it.
    """

    idx: list[int] = field(default_factory=list)
    record: list[str] = field(default_factory=list)
    signal_type: list[str] = field(default_factory=list)
    value: list[str] = field(default_factory=list)
    state: list[str] = field(default_factory=list)
    leaf: list[bytes] = field(default_factory=list)

    @classmethod
    def of(cls, versions: Iterable[RecordVersion]) -> VersionBatch:
        batch = cls()
        for v in versions:
            batch.append(v)
        return batch

    def __len__(self) -> int:
        return len(self.idx)

    def append(self, v: RecordVersion) -> None:
        self.idx.append(v.idx)
        self.record.append(v.record)
        self.signal_type.append(v.signal_type)
        self.value.append(v.value)
        self.state.append(v.state)
        self.leaf.append(v.leaf)

    def extend(self, other: VersionBatch) -> None:
        self.idx.extend(other.idx)
        self.record.extend(other.record)
        self.signal_type.extend(other.signal_type)
        self.value.extend(other.value)
        self.state.extend(other.state)
        self.leaf.extend(other.leaf)

    def take(self, count: int) -> VersionBatch:
        """Remove the first ``count`` versions and return them as a batch of their own."""
        head = VersionBatch(
            self.idx[:count],
            self.record[:count],
            self.signal_type[:count],
            self.value[:count],
            self.state[:count],
            self.leaf[:count],
        )
        for column in (self.idx, self.record, self.signal_type, self.value, self.state):
            del column[:count]
        del self.leaf[:count]
        return head


@dataclass(slots=True)
class StoredRecord:
    """A record as the local store holds it: its head version."""

    record: str
    signal_type: str
    value: str
    state: str
    labels: tuple[str, ...]
    contributors: tuple[str, ...]
    version: int
    idx: int  # log index of the head version
    cause: str
    time: int
    leaf: bytes
    # Flagged in its version: an open dispute, or a false positive against a positive.
    disputed: bool = False

    @classmethod
    def from_row(
        cls, record: str, signal_type: str, value: str, state: str, idx: int, leaf: bytes
    ) -> StoredRecord:
        """The record from a stored row: what the row does not hold comes from the leaf."""
        version = orjson.loads(leaf)
        return cls(
            record,
            signal_type,
            value,
            state,
            tuple(version["labels"]),
            tuple(version["contributors"]),
            version["version"],
            idx,
            version["cause"],
            version["time"],
            leaf,
            bool(version.get("disputed", False)),
        )

    @property
    def tombstone(self) -> bool:
        return self.state in TOMBSTONE_STATES

    def export_fields(self) -> dict[str, Any]:
        """The record as an export line shows it (no leaf: proofs need the store)."""
        return {
            "signal_type": self.signal_type,
            "value": self.value,
            "labels": self.labels,
            "state": self.state,
            "record": self.record,
            "version": self.version,
            "contributors": self.contributors,
            "disputed": self.disputed,
            "index": self.idx,
            "cause": self.cause,
            "time": self.time,
        }


@dataclass
class ApplyCounts:
    """What one :meth:`LocalStore.apply` did, version by version.

    Every version given lands in exactly one bucket: ``new`` created a record,
    ``updated`` replaced an existing record's head, ``tombstones`` set a
    tombstone state (on a new or existing record), ``skipped`` was no newer
    than what the store already held.
    """

    new: int = 0
    updated: int = 0
    tombstones: int = 0
    skipped: int = 0


@dataclass(frozen=True)
class StoreSummary:
    """What ``hashfed status`` shows about the local copy, read offline."""

    path: str
    schema_version: int
    server: str | None
    org: str | None
    cursor: str | None
    last_sync: int | None
    last_log_size: int | None
    counts: list[tuple[str, str, int]]  # (signal_type, state, records)

    @property
    def held(self) -> int:
        return sum(n for _, state, n in self.counts if state not in TOMBSTONE_STATES)

    @property
    def tombstones(self) -> int:
        return sum(n for _, state, n in self.counts if state in TOMBSTONE_STATES)


def normalize_server(url: str) -> str:
    """The form a server URL is bound and compared in (no trailing slash)."""
    return url.strip().rstrip("/")


class LocalStore:
    """A local SQLite store of pulled records. Open it with :meth:`open`.

    Readers (status, export, a matcher) may use the store while a pull runs:
    the database is in WAL mode, so they see the last committed batch.
    Writers go through :meth:`apply`, under :meth:`locked` (``pull`` takes it).
    One object may move between threads but must not be used by two at once.
    """

    def __init__(self, path: Path, conn: sqlite3.Connection) -> None:
        self.path = path
        self._conn = conn
        self._bulk: _NewIds | None = None  # set during a bulk load

    @classmethod
    def open(cls, path: str | Path, *, create: bool = True) -> LocalStore:
        """Open (and migrate) the store at ``path``, creating it unless ``create`` is False.

        Raises :class:`StoreMissing` when it does not exist and ``create`` is
        False, :class:`StoreError` when the file is not a store this version
        of hashfed can read.
        """
        path = Path(path).expanduser()
        if not path.exists():
            if not create:
                raise StoreMissing(f"no local store at {path} yet; run 'hashfed pull' first")
            path.parent.mkdir(parents=True, exist_ok=True)
            # The copy is for this member only: not world-readable (SQLite gives
            # its -wal and -shm files the same mode).
            os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))
        # check_same_thread off: a pull commits from one writer thread while the
        # event loop's thread reads between batches, never both at once.
        conn = sqlite3.connect(
            path,
            isolation_level=None,
            timeout=BUSY_TIMEOUT_MS / 1000,
            check_same_thread=False,
        )
        store = cls(path, conn)
        try:
            conn.execute(f"PRAGMA page_size = {PAGE_BYTES}")  # no effect on an existing store
            conn.execute("PRAGMA journal_mode = WAL")
            # In WAL mode NORMAL never corrupts and never splits a transaction;
            # a power cut may lose the last commits, which the cursor then redoes.
            conn.execute("PRAGMA synchronous = NORMAL")
            # Random record ids and hash values make every insert touch random
            # B-tree pages: a big cache keeps them in memory through a large pull.
            conn.execute(f"PRAGMA cache_size = -{CACHE_KIB}")
            store._migrate()
        except sqlite3.DatabaseError as exc:
            conn.close()
            raise StoreError(f"{path} is not a usable hashfed store: {exc}") from exc
        except BaseException:
            conn.close()
            raise
        return store

    def close(self) -> None:
        """Close the database connection."""
        self._conn.close()

    def __enter__(self) -> LocalStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # Schema

    def _migrate(self) -> None:
        # Readers (status, export) open the store while a pull writes: only take
        # the write lock when there is something to migrate.
        if self._stored_schema() == SCHEMA_VERSION:
            return
        with self._transaction() as conn:
            conn.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT)")
            current = self._stored_schema()
            if current > SCHEMA_VERSION:
                raise StoreError(
                    f"{self.path} has schema {current}, written by a newer hashfed; "
                    f"this one knows up to {SCHEMA_VERSION}: upgrade hashfed"
                )
            for version in range(current + 1, SCHEMA_VERSION + 1):
                for sql in MIGRATIONS[version - 1]:
                    conn.execute(sql)
                self._set_meta(META_SCHEMA, str(version))

    def _stored_schema(self) -> int:
        try:
            return int(self.get_meta(META_SCHEMA) or 0)
        except sqlite3.OperationalError:  # no meta table: a new, empty file
            return 0

    @property
    def schema_version(self) -> int:
        """The schema the store is at (always :data:`SCHEMA_VERSION` once opened)."""
        return int(self.get_meta(META_SCHEMA) or 0)

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        # IMMEDIATE: take the write lock up front, so a reader-turned-writer never
        # fails half-way with SQLITE_BUSY.
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            yield self._conn
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise
        self._conn.execute("COMMIT")

    # Meta

    def get_meta(self, key: str) -> str | None:
        """One value of the ``meta`` table, or None."""
        row = self._conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def _set_meta(self, key: str, value: str | None) -> None:
        if value is None:
            self._conn.execute("DELETE FROM meta WHERE key = ?", (key,))
        else:
            self._conn.execute(
                "INSERT INTO meta (key, value) VALUES (?, ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (key, value),
            )

    def set_meta(self, values: dict[str, str | None]) -> None:
        """Set (or, with None, delete) meta values in one transaction."""
        with self._transaction():
            for key, value in values.items():
                self._set_meta(key, value)

    def record_leaf(self, record_id: str) -> tuple[int, bytes] | None:
        """(log index, exact leaf bytes) of a record's head version, or None."""
        row = self._conn.execute(
            "SELECT idx, leaf FROM records WHERE id = ?", (record_id,)
        ).fetchone()
        return None if row is None else (int(row[0]), bytes(row[1]))

    def latest_version_before(self, size: int) -> tuple[int, bytes] | None:
        """The stored head version with the highest log index below ``size``."""
        row = self._conn.execute(
            "SELECT idx, leaf FROM records WHERE idx < ? ORDER BY idx DESC LIMIT 1", (size,)
        ).fetchone()
        return None if row is None else (int(row[0]), bytes(row[1]))

    @property
    def cursor(self) -> str | None:
        """The feed cursor after the last committed version (None: nothing pulled yet)."""
        return self.get_meta(META_CURSOR)

    @property
    def binding(self) -> tuple[str, str] | None:
        """The (server, org) this store copies, or None before the first pull."""
        server, org = self.get_meta(META_SERVER), self.get_meta(META_ORG)
        return None if server is None or org is None else (server, org)

    def bind(self, server: str, org: str) -> None:
        """Bind the store to ``server`` and ``org``, or refuse if it copies another.

        A store holds one federation's feed as one member saw it; mixing two
        would merge unrelated logs under one cursor. Raises
        :class:`StoreBoundElsewhere`.
        """
        server = normalize_server(server)
        bound = self.binding
        if bound is None:
            with self._transaction():
                self._set_meta(META_SERVER, server)
                self._set_meta(META_ORG, org)
            return
        if bound != (server, org):
            raise StoreBoundElsewhere(
                f"the store {self.path} holds the copy of {bound[0]} as {bound[1]!r}; "
                f"it cannot pull {server} as {org!r}. Give this profile its own store path "
                "(each profile should have one) or remove the store file to start over"
            )

    # Locking

    @property
    def lock_path(self) -> Path:
        return self.path.with_name(self.path.name + LOCK_SUFFIX)

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the store's exclusive writer lock, or raise :class:`StoreLocked` at once.

        An ``flock`` on ``<store>.lock``: the kernel releases it when the
        holder exits, however it exits, so a crashed pull never leaves the
        store locked. The file names the holder's PID for the message.
        """
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
                raise StoreLocked(
                    f"another 'hashfed pull' (pid {holder}) is updating the store {self.path}; "
                    "wait for it to finish (two pulls must not race)"
                ) from None
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            yield
        finally:
            os.close(fd)  # releases the lock

    # Writing

    def is_empty(self) -> bool:
        """Whether the store holds no record at all (a first pull, or after a wipe)."""
        return self._conn.execute("SELECT 1 FROM records LIMIT 1").fetchone() is None

    def begin_bulk_load(self) -> None:
        """Load into an empty store (or one the next :meth:`apply` resets) without the id index.

        Until :meth:`end_bulk_load`, rows are appended without the record-id
        index; the ids written are kept in memory (8 bytes each) to check that
        no later version repeats a record, and if one might, the index is
        built there and then and the load goes on as usual. Reads stay
        correct without the index, only slower; if the load is interrupted,
        :meth:`ensure_indexes` (every pull calls it first) builds it.
        """
        self._conn.execute("DROP INDEX IF EXISTS ix_records_id")
        self._bulk = _NewIds()

    def end_bulk_load(self) -> None:
        """Build the record-id index a bulk load went without."""
        self._bulk = None
        self.ensure_indexes()

    def ensure_indexes(self) -> None:
        """Build the record-id index if it is missing (after an interrupted bulk load)."""
        self._conn.execute(_CREATE_ID_INDEX)

    def apply(
        self,
        versions: VersionBatch | Sequence[RecordVersion],
        cursor: str,
        *,
        log_size: int | None = None,
        reset: bool = False,
    ) -> ApplyCounts:
        """Apply ``versions`` (in log order) and move the cursor to ``cursor``, atomically.

        A version replaces a record's head only if its log index is greater
        than the stored one, so applying the same versions twice changes
        nothing. ``reset`` first deletes every record (a full resync) in the
        same transaction. ``log_size`` is the server's log size last seen.
        """
        batch = versions if isinstance(versions, VersionBatch) else VersionBatch.of(versions)
        keys = None
        if self._bulk is not None:
            keys = _NewIds.keys(batch.record)
            if keys is None or not self._bulk.all_new(keys):
                self.end_bulk_load()  # a record may repeat: find it by the index from now on
                keys = None
        with self._transaction() as conn:
            if reset:
                conn.execute("DELETE FROM records")
                conn.execute("DELETE FROM counts")
            heads: dict[str, tuple[int, str]] = {}
            if batch.record and keys is None:
                ids = orjson.dumps(batch.record).decode()
                heads = {rid: (idx, state) for rid, idx, state in conn.execute(_HEADS, (ids,))}
            if keys is not None or (not heads and len(set(batch.record)) == len(batch.record)):
                counts, tally = _all_new(batch)
            else:
                counts, tally, replaced, rows = _replacing(batch, heads)
                conn.executemany(_DELETE, ((idx,) for idx in replaced))
                batch = rows
            if tally:
                conn.executemany(_COUNT, [(t, st, n) for (t, st), n in tally.items() if n])
                conn.execute("DELETE FROM counts WHERE records = 0")
            columns = (batch.idx, batch.record, batch.signal_type, batch.value, batch.state)
            _insert_records(conn, list(zip(*columns, batch.leaf, strict=True)))
            self._set_meta(META_CURSOR, cursor)
            self._set_meta(META_LAST_SYNC, str(int(time.time())))
            if log_size is not None:
                self._set_meta(META_LOG_SIZE, str(log_size))
        if keys is not None and self._bulk is not None:
            self._bulk.add(keys)  # committed
        return counts

    # Reading

    def counts(self) -> list[tuple[str, str, int]]:
        """Records by (signal_type, state), sorted (kept up to date by :meth:`apply`)."""
        rows = self._conn.execute(
            "SELECT signal_type, state, records FROM counts ORDER BY signal_type, state"
        ).fetchall()
        return [(str(t), str(s), int(n)) for t, s, n in rows]

    def summary(self) -> StoreSummary:
        """Binding, cursor, last sync and counts: everything status shows, offline."""
        last_sync = self.get_meta(META_LAST_SYNC)
        log_size = self.get_meta(META_LOG_SIZE)
        return StoreSummary(
            path=str(self.path),
            schema_version=self.schema_version,
            server=self.get_meta(META_SERVER),
            org=self.get_meta(META_ORG),
            cursor=self.cursor,
            last_sync=int(last_sync) if last_sync is not None else None,
            last_log_size=int(log_size) if log_size is not None else None,
            counts=self.counts(),
        )

    def records(
        self, *, signal_type: str | None = None, include_tombstones: bool = False
    ) -> Iterator[StoredRecord]:
        """Stored records ordered by (signal_type, value); tombstones only if asked."""
        where: list[str] = []
        params: list[Any] = []
        if signal_type is not None:
            where.append("signal_type = ?")
            params.append(signal_type)
        if not include_tombstones:
            where.append(f"state NOT IN ({', '.join('?' * len(TOMBSTONE_STATES))})")
            params.extend(sorted(TOMBSTONE_STATES))
        # No index serves this order: an export sorts once (SQLite's sorter),
        # which is cheaper than keeping an index of random hash values on every pull.
        sql = (
            _COLUMNS
            + (f" WHERE {' AND '.join(where)}" if where else "")
            + " ORDER BY signal_type, value"
        )
        for rid, stype, value, state, idx, leaf in self._conn.execute(sql, params):
            yield StoredRecord.from_row(rid, stype, value, state, idx, bytes(leaf))


_Keys = npt.NDArray[np.uint64]


class _NewIds:
    """The record ids a bulk load wrote: sorted runs of their first 8 bytes.

    Runs of similar size are merged (as in a binary counter), so checking a
    batch costs a binary search in a handful of runs and keeping them
    O(n log n) in all. Two ids sharing their first 8 bytes (about one chance
    in 10^7 among 10^7 random ids) only look like a repeat: a false alarm
    ends the bulk load early, it never lets a repeat through.
    """

    def __init__(self) -> None:
        self._runs: list[_Keys] = []

    @staticmethod
    def keys(ids: Sequence[str]) -> _Keys | None:
        """The sorted keys of record ids (None unless they are all 32 hex digits)."""
        try:
            raw = bytes.fromhex("".join(ids))
        except ValueError:
            return None
        if len(raw) != 16 * len(ids):
            return None
        return np.sort(np.frombuffer(raw, dtype=">u8")[::2].astype(np.uint64))

    def all_new(self, keys: _Keys) -> bool:
        """Whether no key repeats within ``keys`` nor is one of the keys added before."""
        if len(keys) > 1 and bool((keys[1:] == keys[:-1]).any()):
            return False
        for run in self._runs:
            at = np.minimum(np.searchsorted(run, keys), len(run) - 1)
            if bool((run[at] == keys).any()):
                return False
        return True

    def add(self, keys: _Keys) -> None:
        if not len(keys):
            return
        self._runs.append(keys)
        while len(self._runs) > 1 and len(self._runs[-2]) <= len(self._runs[-1]):
            last = self._runs.pop()
            self._runs[-1] = np.sort(np.concatenate((self._runs[-1], last)), kind="stable")


def _all_new(batch: VersionBatch) -> tuple[ApplyCounts, Counter[tuple[str, str]]]:
    """Counts for a batch of distinct records none of which the store holds (a bulk load)."""
    tally = Counter(zip(batch.signal_type, batch.state, strict=True))
    tombstones = sum(n for (_, state), n in tally.items() if state in TOMBSTONE_STATES)
    return ApplyCounts(new=len(batch) - tombstones, tombstones=tombstones), tally


def _replacing(
    batch: VersionBatch, heads: dict[str, tuple[int, str]]
) -> tuple[ApplyCounts, Counter[tuple[str, str]], list[int], VersionBatch]:
    """Version by version: counts, the rows to delete (by log index) and the rows to insert.

    ``heads`` holds the stored (log index, state) of the batch's records the
    store has; it is updated as the batch goes. Only the newest version of a
    record in the batch is written, replacing the stored one.
    """
    counts = ApplyCounts()
    tally: Counter[tuple[str, str]] = Counter()
    stored = dict(heads)
    newest: dict[str, int] = {}  # record -> position in the batch
    for i, (rid, idx, stype, state) in enumerate(
        zip(batch.record, batch.idx, batch.signal_type, batch.state, strict=True)
    ):
        held = heads.get(rid)
        if held is not None and idx <= held[0]:
            counts.skipped += 1
            continue
        if state in TOMBSTONE_STATES:
            counts.tombstones += 1
        elif held is None:
            counts.new += 1
        else:
            counts.updated += 1
        if held is not None:
            tally[stype, held[1]] -= 1
        tally[stype, state] += 1
        heads[rid] = (idx, state)
        newest[rid] = i
    replaced = [stored[rid][0] for rid in newest if rid in stored]
    rows = VersionBatch()
    for i in sorted(newest.values()):
        rows.idx.append(batch.idx[i])
        rows.record.append(batch.record[i])
        rows.signal_type.append(batch.signal_type[i])
        rows.value.append(batch.value[i])
        rows.state.append(batch.state[i])
        rows.leaf.append(batch.leaf[i])
    return counts, tally, replaced, rows


def write_csv(records: Iterable[StoredRecord], out: IO[str]) -> int:
    """Write records as CSV (:data:`CSV_COLUMNS`); returns how many rows.

    The first three columns (``signal_type,value,labels`` with labels
    separated by ``;``) are what ``hashfed push`` reads back.
    """
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    count = 0
    for r in records:
        writer.writerow(
            (
                r.signal_type,
                r.value,
                CSV_LIST_SEPARATOR.join(r.labels),
                r.state,
                r.record,
                r.version,
                CSV_LIST_SEPARATOR.join(r.contributors),
                "true" if r.disputed else "false",
            )
        )
        count += 1
    return count


def write_jsonl(records: Iterable[StoredRecord], out: IO[bytes]) -> int:
    """Write records as JSON Lines (one object per record); returns how many lines."""
    count = 0
    for r in records:
        out.write(orjson.dumps(r.export_fields()) + b"\n")
        count += 1
    return count
