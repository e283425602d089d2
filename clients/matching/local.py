"""Matching against the member's local store, with a PDQ index kept next to it.

The index lives in ``<store>.pdq-index/`` (see
:meth:`~federation.protocol.pdq_index.PdqIndex.save`); its manifest records the
store it copies (server, organisation), the feed cursor it reflects and the
highest log index it applied. :meth:`LocalMatcher.open` brings it up to date
without rebuilding it:

- the store's cursor is unchanged: nothing to do (opening maps the files);
- the cursor moved (``hashfed pull`` ran): the records whose head version
  has a log index above the one applied are read, approved ones added,
  tombstoned ones (withdrawn, retracted) removed;
- no usable index, a store bound elsewhere, or a live count that disagrees
  with the store's own counts (a resync): the index is built again.

The reads happen in one SQLite read transaction, so the index, the cursor
and the counts it is checked against are one snapshot even while a pull
commits. A lock file serialises matchers updating the same index.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import orjson

from clients.store import META_CURSOR, META_ORG, META_SERVER, TOMBSTONE_STATES, LocalStore
from federation.protocol.matching import (
    Match,
    Query,
    RecordInfo,
    assemble,
    candidate_ids,
    default_threshold,
    find_candidates,
)
from federation.protocol.pdq_index import IndexFormatError, PdqIndex, codes_from_hex

__all__ = ["INDEX_SUFFIX", "LocalMatcher", "RefreshReport", "index_path"]

INDEX_SUFFIX = ".pdq-index"
LOCK_SUFFIX = ".lock"
LOOKUP_CHUNK = 900  # ids per IN (...) query, under SQLite's bound-parameter limit
_TOMBSTONES = tuple(sorted(TOMBSTONE_STATES))
# The store's rows are keyed by log index: the versions past a given index are
# a range read of the table's tail (the whole table for a rebuild).
_CHANGED = "SELECT value, state, idx FROM records WHERE idx > ? AND signal_type = 'pdq'"
_HELD = (
    "SELECT COALESCE(SUM(records), 0) FROM counts WHERE signal_type = 'pdq' "
    f"AND state NOT IN ({', '.join('?' * len(_TOMBSTONES))})"
)
_LOOKUP = (
    "SELECT id, signal_type, value, state, leaf FROM records "
    "WHERE id IN (SELECT value FROM json_each(?))"
)


def index_path(store_path: str | Path) -> Path:
    """Where the PDQ index of the store at ``store_path`` is kept."""
    path = Path(store_path).expanduser()
    return path.with_name(path.name + INDEX_SUFFIX)


@dataclass(frozen=True)
class RefreshReport:
    """What opening did to the index: ``unchanged``, ``updated`` or ``rebuilt``."""

    action: str
    added: int
    removed: int
    held: int
    seconds: float
    reason: str = ""


@contextlib.contextmanager
def _exclusive(lock_path: Path) -> Iterator[None]:
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # another matcher's update takes seconds at most
        yield
    finally:
        os.close(fd)


class LocalMatcher:
    """Matches signals against a local store. Open it with :meth:`open`; close it after."""

    def __init__(self, store_path: Path, conn: sqlite3.Connection, index: PdqIndex) -> None:
        self.store_path = store_path
        self.index = index
        self._conn = conn
        self.report = RefreshReport("unchanged", 0, 0, len(index), 0.0)

    @classmethod
    def open(
        cls,
        store_path: str | Path,
        *,
        rebuild: bool = False,
        on_build: Callable[[str], None] | None = None,
    ) -> LocalMatcher:
        """Open the store at ``store_path`` and bring its PDQ index up to date.

        Raises :class:`clients.store.StoreMissing` when there is no store
        (nothing pulled yet) and :class:`clients.store.StoreError` when it is
        unusable. ``rebuild`` builds the index from scratch; ``on_build`` is
        told why before a rebuild starts (it may take a while on a big store).
        """
        path = Path(store_path).expanduser()
        with LocalStore.open(path, create=False):
            pass  # checks and migrates the store
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        try:
            conn.execute("PRAGMA query_only = ON")
            folder = index_path(path)
            with _exclusive(folder.with_name(folder.name + LOCK_SUFFIX)):
                matcher = cls._refreshed(path, conn, folder, rebuild, on_build)
        except BaseException:
            conn.close()
            raise
        return matcher

    @classmethod
    def _refreshed(
        cls,
        path: Path,
        conn: sqlite3.Connection,
        folder: Path,
        rebuild: bool,
        on_build: Callable[[str], None] | None,
    ) -> LocalMatcher:
        started = time.perf_counter()
        index: PdqIndex | None = None
        meta: dict[str, object] = {}
        reason = "asked to rebuild"
        if not rebuild:
            try:
                index, meta = PdqIndex.load(folder)
            except IndexFormatError as err:
                reason = "no usable index yet" if not folder.exists() else str(err)
        conn.execute("BEGIN")  # one snapshot for everything read below
        try:
            binding = {
                "server": _meta(conn, META_SERVER),
                "org": _meta(conn, META_ORG),
                "cursor": _meta(conn, META_CURSOR),
            }
            held = int(conn.execute(_HELD, _TOMBSTONES).fetchone()[0])
            added = removed = 0
            action = "unchanged"
            if index is not None and any(meta.get(k) != binding[k] for k in ("server", "org")):
                index, reason = None, "the store now copies another server or organisation"
            if index is not None and meta.get("cursor") != binding["cursor"]:
                after = meta.get("indexed_idx")
                after = after if isinstance(after, int) else -1
                index, added, removed, last = _apply_changes(conn, index, after)
                meta["indexed_idx"] = max(after, last)
                action = "updated"
                if len(index) != held:
                    index, reason = None, "the index disagrees with the store (a resync?)"
            if index is not None and len(index) != held:
                index, reason = None, "the index disagrees with the store"
            if index is None:
                if on_build is not None:
                    on_build(reason)
                index, added, removed, last = _apply_changes(conn, PdqIndex(), -1)
                meta = {"indexed_idx": last}
                action = "rebuilt"
        finally:
            conn.execute("COMMIT")
        if action != "unchanged":
            meta.update(binding, store=str(path))
            index.save(folder, meta)
        matcher = cls(path, conn, index)
        matcher.report = RefreshReport(
            action, added, removed, len(index), time.perf_counter() - started,
            reason if action == "rebuilt" else "",
        )  # fmt: skip
        return matcher

    def close(self) -> None:
        """Close the store connection."""
        self._conn.close()

    def __enter__(self) -> LocalMatcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def match(
        self,
        queries: Sequence[Query],
        *,
        threshold: int | None = None,
        only_undisputed: bool = False,
    ) -> list[list[Match]]:
        """Each query's matches among the store's approved records, nearest first.

        Cryptographic hashes and URLs match exactly; PDQ within ``threshold``
        (default: the registry's, 31). Withdrawn and retracted records never
        match; ``only_undisputed`` also leaves out disputed ones.
        """
        limit = default_threshold("pdq") if threshold is None else threshold
        candidates = find_candidates(queries, self.index, limit)
        records = self.records(candidate_ids(candidates))
        return assemble(queries, candidates, records, only_undisputed=only_undisputed)

    def records(self, ids: Sequence[str]) -> dict[str, RecordInfo]:
        """The stored head of each record among ``ids`` that the store holds."""
        found: dict[str, RecordInfo] = {}
        loads = orjson.loads
        for first in range(0, len(ids), LOOKUP_CHUNK):
            chunk = orjson.dumps(list(ids[first : first + LOOKUP_CHUNK])).decode()
            for rid, signal_type, value, state, leaf in self._conn.execute(_LOOKUP, (chunk,)):
                version = loads(leaf)  # labels, contributors and the dispute flag
                found[rid] = RecordInfo(
                    record=rid,
                    signal_type=signal_type,
                    value=value,
                    state=state,
                    labels=tuple(version["labels"]),
                    contributors=tuple(version["contributors"]),
                    disputed=bool(version.get("disputed", False)),
                )
        return found


def _meta(conn: sqlite3.Connection, key: str) -> str | None:
    row = conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
    return None if row is None else str(row[0])


def _apply_changes(
    conn: sqlite3.Connection, index: PdqIndex, after: int
) -> tuple[PdqIndex, int, int, int]:
    """Apply the PDQ records whose head is past log index ``after``.

    Returns the index (a new one when ``index`` was empty: built at once),
    how many hashes were added and removed, and the highest log index seen.
    """
    live: list[str] = []
    dead: list[str] = []
    last = after
    for value, state, idx in conn.execute(_CHANGED, (after,)):
        (dead if state in TOMBSTONE_STATES else live).append(value)
        last = max(last, idx)
    removed = index.remove(codes_from_hex(dead)) if dead else 0
    if not live:
        return index, 0, removed, last
    codes = codes_from_hex(live)
    if not len(index):
        # The values of a store's records are distinct (a record id is its value's).
        return PdqIndex.build(codes, distinct=True), len(live), removed, last
    return index, index.add(codes), removed, last
