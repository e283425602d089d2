"""The local store: idempotent, ordered application, tombstones, binding, locking, schema."""

from __future__ import annotations

import csv
import io
import os
import random
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest

from clients.store import (
    CSV_COLUMNS,
    MIGRATIONS,
    SCHEMA_VERSION,
    LocalStore,
    RecordVersion,
    StoreBoundElsewhere,
    StoreError,
    StoreLocked,
    StoreMissing,
    _NewIds,
    write_csv,
    write_jsonl,
)
from federation.protocol.signals import record_id
from federation.protocol.statements import canonical_json

SERVER = "https://hashfed.example"


def version(
    index: int,
    value: str = "a" * 32,
    *,
    v: int = 1,
    state: str = "approved",
    labels: tuple[str, ...] = ("recruitment",),
    contributors: tuple[str, ...] = ("alpha",),
    signal_type: str = "md5",
) -> RecordVersion:
    fields: dict[str, Any] = {
        "kind": "version",
        "index": index,
        "record": record_id(signal_type, value),
        "version": v,
        "signal_type": signal_type,
        "value": value,
        "state": state,
        "labels": list(labels),
        "contributors": list(contributors),
        "cause": "c" * 64,
        "time": 1_700_000_000 + index,
    }
    return RecordVersion(
        index,
        fields["record"],
        v,
        signal_type,
        value,
        state,
        labels,
        contributors,
        fields["cause"],
        fields["time"],
        canonical_json(fields),
    )


@pytest.fixture
def store(tmp_path: Path) -> Any:
    with LocalStore.open(tmp_path / "store" / "local.db") as s:
        yield s


def rows(store: LocalStore) -> list[tuple[Any, ...]]:
    return [
        (r.record, r.state, r.version, r.idx, r.labels, r.leaf)
        for r in store.records(include_tombstones=True)
    ]


def scanned_counts(store: LocalStore) -> list[tuple[str, str, int]]:
    """What the kept counts must equal: a scan of the records."""
    conn = sqlite3.connect(store.path)
    found = conn.execute(
        "SELECT signal_type, state, count(*) FROM records "
        "GROUP BY signal_type, state ORDER BY signal_type, state"
    ).fetchall()
    conn.close()
    return found


def test_new_store_is_at_the_current_schema_in_wal_mode(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "dir" / "local.db"
    with LocalStore.open(path) as store:
        assert store.schema_version == SCHEMA_VERSION
        assert store.cursor is None and store.binding is None
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    indexes = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='index'")}
    conn.close()
    assert {"meta", "records"} <= tables
    assert "ix_records_id" in indexes
    with LocalStore.open(path) as again:  # reopening migrates nothing
        assert again.schema_version == SCHEMA_VERSION


def test_readers_open_the_store_while_a_writer_holds_it(tmp_path: Path) -> None:
    path = tmp_path / "local.db"
    with LocalStore.open(path) as writer:
        writer.apply([version(1)], "c2")
        writing = sqlite3.connect(path, isolation_level=None)
        writing.execute("BEGIN IMMEDIATE")  # a pull's transaction in progress
        try:
            with LocalStore.open(path, create=False) as reader:
                assert reader.summary().held == 1
        finally:
            writing.execute("ROLLBACK")
            writing.close()


def test_store_of_a_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "local.db"
    LocalStore.open(path).close()
    conn = sqlite3.connect(path)
    conn.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (SCHEMA_VERSION + 1,))
    conn.commit()
    conn.close()
    with pytest.raises(StoreError, match="newer hashfed"):
        LocalStore.open(path)


def test_a_file_that_is_not_a_store_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "local.db"
    path.write_bytes(b"this is not SQLite" * 100)
    with pytest.raises(StoreError, match="not a usable hashfed store"):
        LocalStore.open(path)


def test_opening_without_create_needs_an_existing_store(tmp_path: Path) -> None:
    with pytest.raises(StoreMissing, match="hashfed pull"):
        LocalStore.open(tmp_path / "none.db", create=False)
    assert not (tmp_path / "none.db").exists()


def test_apply_commits_versions_and_cursor_together(store: LocalStore) -> None:
    counts = store.apply([version(1), version(3, "b" * 32)], "cursor-4", log_size=5)
    assert (counts.new, counts.updated, counts.tombstones, counts.skipped) == (2, 0, 0, 0)
    assert store.cursor == "cursor-4"
    assert store.summary().last_log_size == 5
    assert store.summary().last_sync is not None


def test_a_failed_apply_changes_neither_data_nor_cursor(store: LocalStore) -> None:
    store.apply([version(1)], "cursor-2")
    bad = version(5, "b" * 32)._replace(leaf=["not", "bytes"])  # type: ignore[arg-type]
    with pytest.raises(sqlite3.ProgrammingError):  # after the first row of the batch is written
        store.apply([version(3, "c" * 32), bad], "cursor-6")
    assert store.cursor == "cursor-2"
    assert [r[0] for r in rows(store)] == [record_id("md5", "a" * 32)]


def test_a_batch_of_thousands_is_stored_whole_and_exact(store: LocalStore) -> None:
    """Big batches go in multi-row statements plus a remainder: every row, byte for byte."""
    batch = [version(i, f"{i:032x}") for i in range(1, 2_346)]
    counts = store.apply(batch, "c2346")
    assert counts.new == 2_345
    stored = {r[3]: r for r in rows(store)}
    assert sorted(stored) == list(range(1, 2_346))
    assert all(stored[v.idx][5] == v.leaf for v in batch)
    assert scanned_counts(store) == [("md5", "approved", 2_345)]
    again = [version(i + 3_000, f"{i:032x}", v=2, state="withdrawn") for i in range(1, 1_500)]
    counts = store.apply(again, "c4500")  # replaces 1,499 heads: the other path
    assert counts.tombstones == 1_499
    assert scanned_counts(store) == [("md5", "approved", 846), ("md5", "withdrawn", 1_499)]


def test_applying_twice_changes_nothing(store: LocalStore) -> None:
    batch = [version(1), version(2, "b" * 32), version(4, v=2, state="withdrawn")]
    store.apply(batch, "c1")
    before = rows(store)
    counts = store.apply(batch, "c1")
    assert (counts.new, counts.updated, counts.tombstones, counts.skipped) == (0, 0, 0, 3)
    assert rows(store) == before


def test_an_older_version_never_replaces_a_newer_one(store: LocalStore) -> None:
    store.apply([version(10, v=3, labels=("glorification",))], "c11")
    counts = store.apply([version(4, v=2)], "c11")
    assert counts.skipped == 1
    [(_, _, v, idx, labels, _)] = rows(store)
    assert (v, idx, labels) == (3, 10, ("glorification",))


def test_in_one_batch_the_last_version_of_a_record_wins(store: LocalStore) -> None:
    batch = [version(1), version(2, v=2, labels=("a", "b")), version(3, v=3, labels=("c",))]
    counts = store.apply(batch, "c4")
    assert (counts.new, counts.updated) == (1, 2)
    [(_, _, v, idx, labels, leaf)] = rows(store)
    assert (v, idx, labels) == (3, 3, ("c",))
    assert leaf == batch[-1].leaf


def test_tombstones_stay_as_rows_and_leave_exports(store: LocalStore) -> None:
    store.apply([version(1), version(2, "b" * 32)], "c3")
    counts = store.apply([version(5, v=2, state="withdrawn")], "c6")
    assert counts.tombstones == 1
    assert {r.state for r in store.records(include_tombstones=True)} == {"approved", "withdrawn"}
    assert [r.value for r in store.records()] == ["b" * 32]
    summary = store.summary()
    assert (summary.held, summary.tombstones) == (1, 1)
    assert store.counts() == scanned_counts(store)
    # A later submission revives the record.
    store.apply([version(9, v=3)], "c10")
    assert len(list(store.records())) == 2


def test_reset_replaces_everything_in_the_same_transaction(store: LocalStore) -> None:
    store.apply([version(1), version(2, "b" * 32)], "c3")
    counts = store.apply([version(0, "c" * 32)], "fresh", reset=True)
    assert counts.new == 1
    assert [r.value for r in store.records()] == ["c" * 32]
    assert store.cursor == "fresh"


def test_counts_by_signal_type_and_state_are_kept_without_a_scan(store: LocalStore) -> None:
    store.apply(
        [
            version(1),
            version(2, "b" * 32),
            version(3, "f" * 64, signal_type="pdq"),
            version(4, "b" * 32, v=2, state="withdrawn"),
        ],
        "c5",
    )
    assert store.counts() == [
        ("md5", "approved", 1),
        ("md5", "withdrawn", 1),
        ("pdq", "approved", 1),
    ]
    assert store.counts() == scanned_counts(store)
    steps: list[tuple[list[RecordVersion], bool]] = [
        ([version(4, "b" * 32, v=2, state="withdrawn")], False),  # already held
        ([version(6, "b" * 32, v=3), version(7, "b" * 32, v=4, state="withdrawn")], False),
        ([version(8, v=2, state="withdrawn"), version(9, "f" * 64, signal_type="pdq")], False),
        ([version(10, "c" * 32), version(11, "c" * 32, v=2, state="pending")], False),
        ([version(12, "d" * 32)], True),
    ]
    for batch, reset in steps:
        store.apply(batch, "c", reset=reset)
        assert store.counts() == scanned_counts(store)
    assert store.counts() == [("md5", "approved", 1)]
    assert [r.signal_type for r in store.records(signal_type="md5")] == ["md5"]


def test_store_is_bound_to_one_server_and_org(store: LocalStore) -> None:
    store.bind(SERVER + "/", "alpha")
    assert store.binding == (SERVER, "alpha")
    store.bind(SERVER, "alpha")  # the same, however spelt
    with pytest.raises(StoreBoundElsewhere, match=r"holds the copy of https://hashfed.example"):
        store.bind("https://other.example", "alpha")
    with pytest.raises(StoreBoundElsewhere, match="as 'beta'"):
        store.bind(SERVER, "beta")


def test_a_second_writer_is_refused_with_the_holders_pid(tmp_path: Path) -> None:
    path = tmp_path / "local.db"
    with LocalStore.open(path) as first, LocalStore.open(path) as second:
        expected = rf"another 'hashfed pull' \(pid {os.getpid()}\)"
        with first.locked(), pytest.raises(StoreLocked, match=expected), second.locked():
            pass
        with second.locked():  # released with the first holder
            pass


HOLD_LOCK = """
import sys
from clients.store import LocalStore
store = LocalStore.open(sys.argv[1])
lock = store.locked()
lock.__enter__()
print("locked", flush=True)
sys.stdin.read()  # hold it until the parent closes our stdin, then exit without releasing
"""


def test_another_process_holding_the_lock_is_named_and_its_exit_frees_it(tmp_path: Path) -> None:
    path = tmp_path / "local.db"
    LocalStore.open(path).close()
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        with (
            LocalStore.open(path) as store,
            pytest.raises(StoreLocked, match=rf"\(pid {holder.pid}\)"),
            store.locked(),
        ):
            pass
    finally:
        holder.communicate(timeout=30)
    with LocalStore.open(path) as store, store.locked():
        pass


def test_export_csv_and_jsonl_round_trip(store: LocalStore) -> None:
    store.apply(
        [
            version(1, labels=("glorification", "recruitment"), contributors=("alpha", "beta")),
            version(2, "https://example.com/a,b", signal_type="url", labels=()),
            version(3, "b" * 32, state="withdrawn"),
        ],
        "c4",
    )
    text = io.StringIO()
    assert write_csv(store.records(), text) == 2
    parsed = list(csv.DictReader(io.StringIO(text.getvalue())))
    assert tuple(parsed[0]) == CSV_COLUMNS
    by_value = {row["value"]: row for row in parsed}
    assert by_value["a" * 32]["labels"] == "glorification;recruitment"
    assert by_value["a" * 32]["contributors"] == "alpha;beta"
    assert by_value["https://example.com/a,b"]["labels"] == ""
    for row in parsed:
        assert row["record"] == record_id(row["signal_type"], row["value"])

    raw = io.BytesIO()
    assert write_jsonl(store.records(include_tombstones=True), raw) == 3
    lines = [orjson.loads(line) for line in raw.getvalue().splitlines()]
    assert [line["state"] for line in lines] == ["approved", "withdrawn", "approved"]
    assert lines[0]["labels"] == ["glorification", "recruitment"]
    assert set(lines[0]) == {
        "signal_type",
        "value",
        "labels",
        "state",
        "record",
        "version",
        "contributors",
        "disputed",
        "index",
        "cause",
        "time",
    }
    assert [line["disputed"] for line in lines] == [False, False, False]


# Schema 1 (a row per record keyed by record id, every member in a column) to 2


SCHEMA_1_RECORD = """
INSERT INTO records
    (id, signal_type, value, state, labels, contributors, version, idx, cause, time, leaf)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
"""


def schema_1_store(path: Path, versions: list[RecordVersion]) -> None:
    """A store as hashfed with store schema 1 wrote it: its DDL, its rows, its counts."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT)")
    for sql in MIGRATIONS[0]:
        conn.execute(sql)
    meta = {"schema_version": "1", "server": SERVER, "org": "alpha", "cursor": "cursor-9"}
    conn.executemany("INSERT INTO meta VALUES (?, ?)", meta.items())
    for v in versions:
        conn.execute(
            SCHEMA_1_RECORD,
            (
                *(v.record, v.signal_type, v.value, v.state),
                *(orjson.dumps(v.labels).decode(), orjson.dumps(v.contributors).decode()),
                *(v.version, v.idx, v.cause, v.time, v.leaf),
            ),
        )
    conn.execute(
        "INSERT INTO counts SELECT signal_type, state, count(*) FROM records "
        "GROUP BY signal_type, state"
    )
    conn.close()


def index_names(path: Path) -> set[str]:
    conn = sqlite3.connect(path)
    names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    conn.close()
    return names


def test_a_schema_1_store_is_migrated_keeping_every_record(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    held = [
        version(3, labels=("glorification", "recruitment"), contributors=("alpha", "beta")),
        version(5, "f" * 64, signal_type="pdq", v=2, labels=()),
        version(8, "b" * 32, v=3, state="withdrawn"),
    ]
    schema_1_store(path, held)
    assert "ix_records_signal" in index_names(path)

    with LocalStore.open(path) as store:
        assert store.schema_version == SCHEMA_VERSION == 2
        assert (store.cursor, store.binding) == ("cursor-9", (SERVER, "alpha"))
        assert store.counts() == scanned_counts(store)
        assert (store.summary().held, store.summary().tombstones) == (2, 1)
        stored = {r.record: r for r in store.records(include_tombstones=True)}
        for v in held:
            r = stored[v.record]
            assert (r.signal_type, r.value, r.state, r.labels, r.contributors) == (
                v.signal_type,
                v.value,
                v.state,
                v.labels,
                v.contributors,
            )
            assert (r.version, r.idx, r.cause, r.time, r.leaf) == (
                v.version,
                v.idx,
                v.cause,
                v.time,
                v.leaf,
            )
            assert store.record_leaf(v.record) == (v.idx, v.leaf)
        assert store.latest_version_before(8) == (5, held[1].leaf)
        # It goes on as any store would: a newer version replaces a migrated one.
        newer = version(10, "f" * 64, signal_type="pdq", v=3)
        counts = store.apply([newer], "cursor-11")
        assert (counts.updated, counts.new) == (1, 0)
        assert store.record_leaf(held[1].record) == (10, newer.leaf)
        assert store.counts() == scanned_counts(store)

    assert index_names(path) >= {"ix_records_id"}
    assert "ix_records_signal" not in index_names(path)
    conn = sqlite3.connect(path)
    columns = [r[1] for r in conn.execute("PRAGMA table_info(records)")]
    conn.close()
    assert columns == ["idx", "id", "signal_type", "value", "state", "leaf"]


# Bulk loads


def batches_of_versions() -> list[list[RecordVersion]]:
    """Three batches; the third repeats a record of the first (a later version of it)."""
    return [
        [version(1), version(2, "b" * 32), version(3, "f" * 64, signal_type="pdq")],
        [version(4, "c" * 32), version(5, "d" * 32, state="withdrawn")],
        [version(6, "e" * 32), version(7, v=2, labels=("glorification",)), version(8, "9" * 32)],
    ]


def test_a_bulk_load_goes_without_the_id_index_until_a_record_repeats(tmp_path: Path) -> None:
    with LocalStore.open(tmp_path / "reference.db") as reference:
        expected = [reference.apply(b, f"c{i}") for i, b in enumerate(batches_of_versions())]
        expected_rows, expected_counts = rows(reference), reference.counts()

    path = tmp_path / "bulk.db"
    with LocalStore.open(path) as store:
        store.begin_bulk_load()
        first, second, third = batches_of_versions()
        got = [store.apply(first, "c0"), store.apply(second, "c1")]
        assert "ix_records_id" not in index_names(path)  # nothing repeated yet
        # Reads stay right without it.
        assert store.record_leaf(first[0].record) == (1, first[0].leaf)
        got.append(store.apply(third, "c2"))  # version 7 repeats a record: indexed from here
        assert "ix_records_id" in index_names(path)
        store.end_bulk_load()
        assert got == expected
        assert rows(store) == expected_rows
        assert store.counts() == expected_counts == scanned_counts(store)


def test_a_bulk_load_checks_repeats_within_a_batch_and_indexes_at_its_end(
    tmp_path: Path,
) -> None:
    path = tmp_path / "bulk.db"
    with LocalStore.open(path) as store:
        store.begin_bulk_load()
        counts = store.apply([version(1), version(2, "b" * 32), version(3, v=2)], "c4")
        assert (counts.new, counts.updated) == (2, 1)
        assert "ix_records_id" in index_names(path)  # a repeat inside the batch

    path = tmp_path / "clean.db"
    with LocalStore.open(path) as store:
        store.begin_bulk_load()
        store.apply([version(1), version(2, "b" * 32)], "c3")
        store.end_bulk_load()
        assert "ix_records_id" in index_names(path)
        assert len(rows(store)) == 2


def test_new_ids_never_miss_a_repeat() -> None:
    rng = random.Random(7)
    seen = _NewIds()
    written: list[str] = []
    for _ in range(40):
        batch = [f"{rng.getrandbits(128):032x}" for _ in range(rng.randrange(1, 60))]
        keys = _NewIds.keys(batch)
        assert keys is not None and seen.all_new(keys)
        seen.add(keys)
        written.extend(batch)
    for rid in rng.sample(written, 50):
        again = _NewIds.keys([f"{rng.getrandbits(128):032x}", rid])
        assert again is not None and not seen.all_new(again)
    twice = _NewIds.keys(["0" * 32, "0" * 32])
    assert twice is not None and not _NewIds().all_new(twice)
    assert _NewIds.keys(["not hex"]) is None and _NewIds.keys(["ab"]) is None
