"""``hashfed pull`` into the local store against a real federation, on SQLite and PostgreSQL.

The store must end up holding exactly the feed's head version of every record
(exact leaf bytes included), whether the pull ran in one go, was interrupted
anywhere and resumed, or was stopped by a malformed item that was later fixed.
"""

from __future__ import annotations

import asyncio
import csv
import hashlib
import io
import json
import os
import sqlite3
import sys
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import Executor
from pathlib import Path
from typing import Any, cast

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import select, update

from clients import sync_feed
from clients.client import FederationClient
from clients.errors import TransportError
from clients.profiles import Profile, ProfileStore
from clients.store import STATES, LocalStore, StoreBoundElsewhere, StoreLocked, VersionBatch
from clients.sync_feed import (
    CursorRejected,
    FeedInterrupted,
    FeedItemInvalid,
    PullResult,
    parse_lines,
    parse_version,
    pull,
)
from federation.log.feed import decode_cursor, encode_cursor
from federation.protocol.keys import write_private_key
from federation.protocol.signals import normalize_signal, record_id
from federation.protocol.statements import canonical_json
from federation.store.schema import log
from tests.conftest import Federation

HASHFED = Path(sys.executable).parent / "hashfed"
LABELS = ["recruitment"]
SMALL_PAGE = 5  # far smaller than the test feeds, so that stream=True really streams


def md5(text: str) -> str:
    return hashlib.md5(text.encode()).hexdigest()


def items(prefix: str, count: int) -> list[dict[str, Any]]:
    return [
        {"signal_type": "md5", "value": md5(f"{prefix}-{i}"), "labels": LABELS}
        for i in range(count)
    ]


def signals(batch: list[dict[str, Any]]) -> list[dict[str, str]]:
    return [{"signal_type": i["signal_type"], "value": i["value"]} for i in batch]


@pytest.fixture
async def member(fed: Federation) -> FederationClient:
    client = fed.client(await fed.admit("alpha"))
    await client.__aenter__()
    return client


@pytest.fixture
def store(tmp_path: Path) -> Iterator[LocalStore]:
    with LocalStore.open(tmp_path / "local.db") as s:
        yield s


async def feed_items(client: FederationClient) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    cursor: str | None = None
    while True:
        page = await client.feed_page(cursor, limit=7)
        found.extend(page["items"])
        cursor = page["next_cursor"]
        if not page["has_more"]:
            return found


def store_rows(store: LocalStore) -> list[tuple[Any, ...]]:
    return [
        (
            *(r.record, r.signal_type, r.value, r.state, r.labels, r.contributors),
            *(r.version, r.idx, r.cause, r.time, r.leaf),
        )
        for r in store.records(include_tombstones=True)
    ]


async def assert_mirrors_feed(fed: Federation, client: FederationClient, store: LocalStore) -> None:
    """The store holds the feed's last version of each record, with the log's exact leaf."""
    heads: dict[str, dict[str, Any]] = {}
    for item in await feed_items(client):
        heads[item["record"]] = item
    stored = {r.record: r for r in store.records(include_tombstones=True)}
    assert set(stored) == set(heads)
    async with fed.db.reading() as conn:
        rows = await conn.execute(
            select(log.c.idx, log.c.leaf).where(log.c.idx.in_([h["index"] for h in heads.values()]))
        )
        leaves = {int(r.idx): bytes(r.leaf) for r in rows}
    for rid, item in heads.items():
        r = stored[rid]
        assert (r.state, r.version, r.idx, r.labels, r.contributors) == (
            item["state"],
            item["version"],
            item["index"],
            tuple(item["labels"]),
            tuple(item["contributors"]),
        )
        assert r.leaf == leaves[item["index"]]
    by_state: dict[tuple[str, str], int] = {}
    for r in stored.values():
        by_state[r.signal_type, r.state] = by_state.get((r.signal_type, r.state), 0) + 1
    assert store.counts() == sorted((t, s, n) for (t, s), n in by_state.items())


def has_id_index(store: LocalStore) -> bool:
    conn = sqlite3.connect(store.path)
    found = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'index' AND name = 'ix_records_id'"
    ).fetchone()
    conn.close()
    return found is not None


def versions_covered(feed: list[dict[str, Any]], store: LocalStore) -> int:
    """How many of the feed's versions the store's cursor says it holds."""
    position = decode_cursor(store.cursor)
    return sum(1 for item in feed if item["index"] < position)


async def populate(member: FederationClient) -> None:
    """Three batches, a re-contribution and withdrawals: records with several versions."""
    first = items("a", 20)
    await member.submit(first)
    await member.submit(items("b", 20))
    await member.withdraw(signals(first[:6]), reason="false positive")
    await member.submit(first[:3])  # revives three tombstones
    await member.submit(items("c", 10))


async def _set_leaf(fed: Federation, idx: int, leaf: bytes) -> None:
    async with fed.db.writing() as conn:
        await conn.execute(update(log).where(log.c.idx == idx).values(leaf=leaf))


def _set_cursor(store: LocalStore, cursor: str) -> None:
    conn = sqlite3.connect(store.path)
    conn.execute("UPDATE meta SET value = ? WHERE key = 'cursor'", (cursor,))
    conn.commit()
    conn.close()


# Feed items the client accepts


def _item(**changes: Any) -> dict[str, Any]:
    value = md5("x")
    item: dict[str, Any] = {
        "kind": "version",
        "index": 7,
        "record": record_id("md5", value),
        "version": 1,
        "signal_type": "md5",
        "value": value,
        "state": "approved",
        "labels": LABELS,
        "contributors": ["alpha"],
        "cause": "c" * 64,
        "time": 1_700_000_000,
    }
    item.update(changes)
    return item


def test_a_well_formed_version_keeps_its_canonical_leaf() -> None:
    item = _item(disputed=False)  # members a newer server adds are kept, not refused
    version = parse_version(item)
    assert version.idx == 7 and version.leaf == canonical_json(item)


MALFORMED = [
    ({"kind": "statement"}, "'kind' must be 'version'"),
    ({"index": "7"}, "'index' must be a non-negative integer"),
    ({"index": True}, "'index' must be a non-negative integer"),
    ({"version": 0}, "'version' must be a positive integer"),
    ({"labels": "recruitment"}, "'labels' must be a list of strings"),
    ({"contributors": [1]}, "'contributors' must be a list of strings"),
    ({"cause": None}, "'cause' must be a string"),
    ({"time": 1.5}, "'time' must be a 64-bit integer"),
    ({"version": 2**63}, "'version' must be a positive integer"),
    ({"index": 2**64}, "'index' must be a non-negative integer"),
    ({"state": "deleted"}, "unknown state 'deleted'"),
    ({"value": md5("x").upper()}, "not in normal form"),
    ({"value": "xyz"}, "md5 value must be 32 hexadecimal characters"),
    ({"signal_type": "nope"}, "unknown signal type"),
    ({"record": "0" * 32}, "does not match the signal"),
]


@pytest.mark.parametrize(("changes", "message"), MALFORMED)
def test_malformed_versions_are_refused_with_their_index(
    changes: dict[str, Any], message: str
) -> None:
    with pytest.raises(FeedItemInvalid, match=message) as caught:
        parse_version(_item(**changes))
    if "index" not in changes:
        assert caught.value.index == 7
        assert "log index 7" in str(caught.value)


def test_missing_members_are_named() -> None:
    item = _item()
    del item["contributors"]
    with pytest.raises(FeedItemInvalid, match="missing member 'contributors'"):
        parse_version(item)


# Streamed lines: checked a list at a time, stored as they came


def _line(index: int, name: str, **changes: Any) -> bytes:
    value = md5(name)
    return canonical_json(
        _item(index=index, value=value, record=record_id("md5", value), **changes)
    )


def one_by_one(lines: list[bytes], after: int = -1) -> VersionBatch:
    """What the per-item checks make of ``lines`` (raising where they refuse one)."""
    batch = VersionBatch()
    for line in lines:
        version = parse_version(orjson.loads(line), line)
        if version.idx <= after:
            raise FeedItemInvalid(version.idx, "not after the previous one")
        after = version.idx
        batch.append(version)
    return batch


def queued(store: LocalStore, lines: list[bytes]) -> tuple[sync_feed._Pull, Any]:
    """A pull's state after it took ``lines`` from a stream: (the pull, the trailer or None)."""
    job = sync_feed._Pull(
        cast(FederationClient, None),
        store,
        PullResult(),
        None,
        cast(Executor, None),
        reset=False,
    )
    return job, job.check_lines(lines)


def test_streamed_lines_are_checked_at_once_and_kept_as_sent() -> None:
    lines = [_line(i, f"v{i}", labels=["recruitment", "glorification"]) for i in range(3, 9)]
    lines += [
        _line(9, "newer", opinions={"seen": 2}, disputed=True, added_by_a_newer_server=[1]),
        _line(11, "escaped", contributors=['al"pha', "b\\eta", "gamma\u00e9"]),
    ]
    batch = parse_lines(lines, 2)
    assert batch == one_by_one(lines)
    assert batch is not None and batch.leaf == lines  # the exact bytes, not re-encoded
    assert parse_lines(lines, 3) is None  # index 3 is not after 3
    assert parse_lines([*lines[:2], lines[1]], 2) is None  # not strictly increasing
    assert parse_lines([*lines, b'{"kind":"end","count":8}'], 2) is None
    assert parse_lines([lines[0], b""], 2) is None
    assert parse_lines([lines[0] + b"\n" + lines[1]], 2) is None  # one line must be one leaf
    assert parse_lines([], 2) == VersionBatch()


@pytest.mark.parametrize(("changes", "message"), MALFORMED)
def test_malformed_lines_are_refused_like_items(
    tmp_path: Path, changes: dict[str, Any], message: str
) -> None:
    # Python's json, as orjson refuses integers beyond 64 bits.
    bad = json.dumps(_item(**changes), sort_keys=True, separators=(",", ":")).encode()
    lines = [_line(5, "before"), bad, _line(9, "after")]
    with LocalStore.open(tmp_path / "s.db") as store:
        job = queued(store, [])[0]
        with pytest.raises(FeedItemInvalid, match=message) as caught:
            job.check_lines(lines)
        assert job.pending.idx == [5]  # the good version before it is kept, nothing after
    if "index" not in changes:
        assert caught.value.index == 7


def test_a_stream_stops_at_its_trailer_and_skips_blank_lines(tmp_path: Path) -> None:
    trailer = {"kind": "end", "next_cursor": "x", "count": 2, "has_more": False}
    lines = [_line(3, "a"), b"  ", _line(4, "b"), orjson.dumps(trailer), b"ignored"]
    with LocalStore.open(tmp_path / "s.db") as store:
        job, end = queued(store, lines)
        assert end == trailer and job.pending.idx == [3, 4]
        assert job.pending.leaf == [lines[0], lines[2]]
        job = queued(store, [])[0]
        with pytest.raises(orjson.JSONDecodeError):
            job.check_lines([_line(3, "a"), b"{not json", _line(4, "b")])
        assert job.pending.idx == [3]


PLAIN_TEXT = st.text(alphabet="abcxyz _-é", max_size=10)
ANY_TEXT = st.text(max_size=12)
ANY_INT = st.integers(-(2**63), 2**63 - 1)


@st.composite
def feed_lines(draw: st.DrawFn) -> list[bytes]:
    """Feed lines as a server sends them: in the canonical form the fast checks take (half
    the lists), or with anything JSON allows, members this client does not know included."""
    plain = draw(st.booleans())
    text = PLAIN_TEXT if plain else st.one_of(PLAIN_TEXT, ANY_TEXT)
    small = st.integers(0, 2**40)
    lines: list[bytes] = []
    index = draw(st.integers(0, 50))
    for _ in range(draw(st.integers(1, 8))):
        index += draw(st.integers(1, 3))
        kind = draw(st.sampled_from(["md5", "pdq", "url"]))
        raw = draw(st.text(min_size=1, max_size=8, alphabet="abcdefgh"))
        value = {
            "md5": md5(raw),
            "pdq": hashlib.sha256(raw.encode()).hexdigest(),
            "url": normalize_signal("url", f"https://example.com/{raw}"),
        }[kind]
        item = {
            "kind": "version",
            "index": index,
            "record": record_id(kind, value),
            "version": draw(st.integers(1, 99) if plain else st.integers(1, 2**63 - 1)),
            "signal_type": kind,
            "value": value,
            "state": draw(st.sampled_from(sorted(STATES))),
            "labels": draw(st.lists(text, max_size=3)),
            "contributors": draw(st.lists(text, max_size=3)),
            "disputed": draw(st.booleans()),
            "opinions": draw(st.dictionaries(text, small if plain else ANY_INT, max_size=2)),
            "cause": "c" * 64 if plain else draw(st.sampled_from(["c" * 64, "cause"])),
            "time": draw(small if plain else ANY_INT),
        }
        if not plain and draw(st.booleans()):
            item[draw(st.sampled_from(["added", "zz"]))] = draw(text)
        lines.append(canonical_json(item))
    return lines


@settings(max_examples=300, deadline=None, database=None)
@given(feed_lines(), st.data())
def test_lines_checked_at_once_are_exactly_the_items_checked_one_by_one(
    lines: list[bytes], data: st.DataObject
) -> None:
    assert parse_lines(lines, -1) == one_by_one(lines)
    # Corrupt one byte: the lines are refused, or taken exactly as one by one would.
    which = data.draw(st.integers(0, len(lines) - 1))
    line = bytearray(lines[which])
    line[data.draw(st.integers(0, len(line) - 1))] = data.draw(st.integers(0, 255))
    corrupt = [*lines[:which], bytes(line), *lines[which + 1 :]]
    try:
        expected: VersionBatch | None = one_by_one(corrupt)
    except (FeedItemInvalid, orjson.JSONDecodeError):
        expected = None
    assert parse_lines(corrupt, -1) in (None, expected)
    if expected is None:
        assert parse_lines(corrupt, -1) is None


# Pulling


@pytest.mark.parametrize("stream", [True, False], ids=["ndjson", "pages"])
async def test_full_pull_mirrors_the_feed(
    fed: Federation, member: FederationClient, store: LocalStore, stream: bool
) -> None:
    await populate(member)
    feed = await feed_items(member)
    result = await pull(member, store, page_size=SMALL_PAGE, stream=stream)
    assert result.streamed is stream
    assert result.versions == len(feed)
    assert (result.new, result.held, result.held_tombstones) == (50, 47, 3)
    assert result.new + result.updated + result.tombstones + result.skipped == len(feed)
    assert result.tombstones == 6
    await assert_mirrors_feed(fed, member, store)
    assert has_id_index(store)  # dropped for the bulk load, built at its end
    assert store.binding == (fed.url, "alpha")
    assert decode_cursor(store.cursor) == feed[-1]["index"] + 1


async def test_incremental_pull_fetches_only_what_is_new(
    fed: Federation, member: FederationClient, store: LocalStore
) -> None:
    await member.submit(items("a", 12))
    first = await pull(member, store, page_size=SMALL_PAGE)
    assert (first.versions, first.new) == (12, 12)
    nothing = await pull(member, store, page_size=SMALL_PAGE)
    assert (nothing.versions, nothing.requests) == (0, 1)
    assert nothing.start_position == first.position

    await member.submit([*items("a", 14)[12:], {**items("a", 1)[0], "labels": ["glorification"]}])
    await member.submit(items("b", 3))
    second = await pull(member, store, page_size=SMALL_PAGE)
    assert second.start_position == first.position
    assert (second.versions, second.new, second.updated, second.skipped) == (5, 5, 0, 0)
    assert second.held == 17
    await assert_mirrors_feed(fed, member, store)


async def test_withdrawals_arrive_as_tombstones(
    fed: Federation, member: FederationClient, store: LocalStore
) -> None:
    batch = items("a", 8)
    await member.submit(batch)
    await pull(member, store)
    await member.withdraw(signals(batch[:3]))
    result = await pull(member, store)
    assert (result.versions, result.tombstones, result.held, result.held_tombstones) == (3, 3, 5, 3)
    states = {r.value: r.state for r in store.records(include_tombstones=True)}
    assert sorted(v for v, s in states.items() if s == "withdrawn") == sorted(
        i["value"] for i in batch[:3]
    )
    assert {r.value for r in store.records()} == {i["value"] for i in batch[3:]}
    await assert_mirrors_feed(fed, member, store)


class Interrupt(Exception):
    pass


@pytest.mark.parametrize("stream", [True, False], ids=["ndjson", "pages"])
async def test_an_interrupted_pull_resumes_exactly_where_it_stopped(
    fed: Federation,
    member: FederationClient,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    stream: bool,
) -> None:
    monkeypatch.setattr(sync_feed, "COMMIT_EVERY_VERSIONS", 7)
    monkeypatch.setattr(sync_feed, "STREAM_REQUEST_VERSIONS", 20)
    await populate(member)
    feed = await feed_items(member)
    total = len(feed)
    options: dict[str, Any] = {"page_size": SMALL_PAGE if stream else 9, "stream": stream}
    with LocalStore.open(tmp_path / "reference.db") as reference:
        await pull(member, reference, **options)
        expected = store_rows(reference)

    stopped_at: list[int] = []

    def stop_after_two_commits(result: PullResult) -> None:
        if result.versions >= 14:
            stopped_at.append(result.versions)
            raise Interrupt

    with LocalStore.open(tmp_path / "raised.db") as store:
        with pytest.raises(Interrupt):
            await pull(member, store, progress=stop_after_two_commits, **options)
        [committed] = stopped_at  # 14 streamed (two batches of 7); 16 paged (7, 9, 7 + 9)
        assert versions_covered(feed, store) == committed
        assert has_id_index(store)
        assert 0 < len(store_rows(store)) <= committed
        resumed = await pull(member, store, **options)
        assert resumed.versions == total - committed and resumed.skipped == 0
        assert store_rows(store) == expected

    # Cancelled (Ctrl-C) at an await in the middle of a batch: that batch is
    # lost, the commits before it are kept. A stream's buffered lines need no await,
    # so let each line come on its own and yield to the loop, as a slow network would.
    real_stream = member.stream_feed_lines

    async def slow_stream(
        after: str | None = None, limit: int | None = None
    ) -> AsyncIterator[list[bytes]]:
        async for lines in real_stream(after, limit):
            for line in lines:
                await asyncio.sleep(0)
                yield [line]

    monkeypatch.setattr(member, "stream_feed_lines", slow_stream)
    with LocalStore.open(tmp_path / "cancelled.db") as store:
        seen: list[int] = []

        def cancel_after_first_commit(result: PullResult) -> None:
            seen.append(result.versions)
            if seen == [0, 7]:
                task.cancel()  # lands at the next await, mid-batch

        task = asyncio.create_task(
            pull(member, store, progress=cancel_after_first_commit, **options)
        )
        with pytest.raises(asyncio.CancelledError):
            await task
        # The batch in the store's hands when the cancel came commits; the one
        # being read is dropped. (A JSON page is applied without an await, so
        # there the cancel lands between pages.)
        kept = versions_covered(feed, store)
        assert 7 <= kept < total
        assert len(store_rows(store)) <= kept
        assert not has_id_index(store)  # a cancel leaves it to the next pull
        resumed = await pull(member, store, **options)
        assert has_id_index(store)
        assert resumed.versions == total - kept and resumed.skipped == 0
        assert store_rows(store) == expected


@pytest.mark.parametrize("stream", [True, False], ids=["ndjson", "pages"])
@pytest.mark.parametrize("corruption", ["not-normal", "not-json"])
async def test_a_malformed_item_stops_the_pull_until_it_is_fixed(
    fed: Federation, member: FederationClient, store: LocalStore, stream: bool, corruption: str
) -> None:
    await member.submit(items("a", 30))
    feed = await feed_items(member)
    bad_index = feed[19]["index"]
    async with fed.db.reading() as conn:
        original = (await conn.execute(select(log.c.leaf).where(log.c.idx == bad_index))).scalar()
    assert original is not None
    bad = orjson.loads(original)
    bad["value"] = bad["value"].upper()
    await _set_leaf(
        fed, bad_index, canonical_json(bad) if corruption == "not-normal" else original[:40]
    )

    for _ in range(2):  # fails the same way every time: never wedged in silence
        with pytest.raises(FeedItemInvalid) as caught:
            await pull(member, store, page_size=SMALL_PAGE, stream=stream)
        if corruption == "not-normal":
            assert caught.value.index == bad_index
            assert f"log index {bad_index}" in caught.value.detail
            assert "not in normal form" in caught.value.detail
        else:
            assert "not JSON" in caught.value.detail
        # The versions before the bad one are kept (a JSON page that does not
        # parse is lost as a whole); the cursor never passes the bad one.
        kept = 19 if corruption == "not-normal" or stream else 15
        assert len(store_rows(store)) == kept
        assert feed[kept - 1]["index"] < decode_cursor(store.cursor) <= bad_index

    await _set_leaf(fed, bad_index, original)
    result = await pull(member, store, page_size=SMALL_PAGE, stream=stream)
    assert (result.versions, result.skipped, result.held) == (30 - kept, 0, 30)
    await assert_mirrors_feed(fed, member, store)


async def test_a_truncated_stream_keeps_what_arrived_and_resumes(
    fed: Federation,
    member: FederationClient,
    store: LocalStore,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    await member.submit(items("a", 25))
    real_stream = member.stream_feed_lines

    async def breaks_after_eleven(
        after: str | None = None, limit: int | None = None
    ) -> AsyncIterator[list[bytes]]:
        sent: list[bytes] = []
        async for lines in real_stream(after, limit):
            for line in lines:
                if len(sent) == 11:
                    yield sent
                    raise TransportError("feed stream broke off: connection reset")
                sent.append(line)

    monkeypatch.setattr(member, "stream_feed_lines", breaks_after_eleven)
    with pytest.raises(FeedInterrupted, match="run the pull again to resume") as caught:
        await pull(member, store, page_size=SMALL_PAGE)
    assert caught.value.result.versions == 11
    assert len(store_rows(store)) == 11
    monkeypatch.undo()
    result = await pull(member, store, page_size=SMALL_PAGE)
    assert (result.versions, result.skipped, result.held) == (14, 0, 25)
    await assert_mirrors_feed(fed, member, store)


async def test_a_stream_that_lost_a_line_commits_nothing_of_it(
    fed: Federation,
    member: FederationClient,
    store: LocalStore,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    await member.submit(items("a", 12))
    real_stream = member.stream_feed_lines

    async def drops_the_fifth(
        after: str | None = None, limit: int | None = None
    ) -> AsyncIterator[list[bytes]]:
        async for lines in real_stream(after, limit):
            yield lines[:4] + lines[5:]

    monkeypatch.setattr(member, "stream_feed_lines", drops_the_fifth)
    with pytest.raises(FeedItemInvalid, match="does not match the 11 versions sent"):
        await pull(member, store, page_size=SMALL_PAGE)
    assert store_rows(store) == [] and store.cursor is None  # committing 6-12 would skip 5
    monkeypatch.undo()
    assert (await pull(member, store, page_size=SMALL_PAGE)).held == 12
    await assert_mirrors_feed(fed, member, store)


async def test_a_cursor_the_server_refuses_needs_a_deliberate_resync(
    fed: Federation, member: FederationClient, store: LocalStore
) -> None:
    await member.submit(items("a", 10))
    await pull(member, store)
    before = store_rows(store)
    # A record the server does not have (the server was restored from a backup, say).
    stray = store_rows(store)[0]
    conn = sqlite3.connect(store.path)
    stray_id = record_id("md5", md5("stray"))
    leaf = canonical_json(_item(index=10**6, value=md5("stray"), record=stray_id))
    conn.execute(
        "INSERT INTO records (idx, id, signal_type, value, state, leaf) VALUES (?, ?, ?, ?, ?, ?)",
        (10**6, stray_id, "md5", md5("stray"), "approved", leaf),
    )
    conn.commit()
    conn.close()
    assert stray

    _set_cursor(store, "not-a-cursor-of-this-server")
    for stream in (True, False):
        with pytest.raises(CursorRejected, match=r"hashfed pull --resync"):
            await pull(member, store, stream=stream)
    assert store.cursor == "not-a-cursor-of-this-server"
    assert len(store_rows(store)) == len(before) + 1

    _set_cursor(store, encode_cursor(10**9))  # beyond the end of the server's log
    with pytest.raises(CursorRejected, match="reset or restored"):
        await pull(member, store)

    result = await pull(member, store, resync=True)
    assert result.resynced and (result.new, result.held) == (10, 10)
    assert store_rows(store) == before
    await assert_mirrors_feed(fed, member, store)


async def test_a_store_is_bound_to_its_server(
    fed: Federation, member: FederationClient, store: LocalStore
) -> None:
    store.bind("https://elsewhere.example", "alpha")
    await member.submit(items("a", 3))
    with pytest.raises(StoreBoundElsewhere, match=r"https://elsewhere\.example"):
        await pull(member, store)
    assert store_rows(store) == [] and store.cursor is None


async def test_a_second_concurrent_pull_is_refused(
    fed: Federation, member: FederationClient, store: LocalStore
) -> None:
    await member.submit(items("a", 3))
    with (
        LocalStore.open(store.path) as other,
        other.locked(),
        pytest.raises(StoreLocked, match=rf"pid {os.getpid()}"),
    ):
        await pull(member, store)
    assert store_rows(store) == []
    assert (await pull(member, store)).versions == 3


# The command line


async def hashfed(home: Path, *args: str) -> tuple[int, str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HASHFED_")}
    env.update({"HASHFED_HOME": str(home), "COLUMNS": "300"})
    process = await asyncio.create_subprocess_exec(
        str(HASHFED),
        *args,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await process.communicate()
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_pull_status_and_export_commands(
    fed: Federation, member: FederationClient, tmp_path: Path
) -> None:
    home = tmp_path / "home"
    key = tmp_path / "alpha.key"
    write_private_key(key, member.identity.private_key)
    store_path = tmp_path / "stores" / "alpha.db"
    profiles = ProfileStore(home)
    profiles.add(Profile("alpha", fed.url, "alpha", str(key), str(store_path)))
    profiles.add(Profile("away", "http://127.0.0.1:9", "alpha", str(key), str(store_path)))
    batch = items("a", 12)
    await member.submit(batch)
    await member.withdraw(signals(batch[:2]))

    code, out, err = await hashfed(home, "status")
    assert code == 0, err
    assert "none yet" in out and "reachable" in out

    code, out, err = await hashfed(home, "pull", "--json", "--page-size", "5")
    assert code == 0, err
    result = orjson.loads(out)
    assert result["streamed"] and result["held"] == 10 and result["held_tombstones"] == 2

    code, out, err = await hashfed(home, "pull")
    assert code == 0, err
    assert "Up to date" in err and "holds 10 records (+2 tombstones)" in err

    code, out, err = await hashfed(home, "status", "--json")
    assert code == 0, err
    status = orjson.loads(out)
    assert status["server_status"]["reachable"] is True
    assert (status["records"], status["tombstones"], status["behind"]) == (10, 2, 0)
    assert status["counts"] == [
        {"signal_type": "md5", "state": "approved", "records": 10},
        {"signal_type": "md5", "state": "withdrawn", "records": 2},
    ]

    code, out, err = await hashfed(home, "--profile", "away", "status")
    assert code == 0, err  # offline: the local copy is still shown
    assert "unreachable" in out and "10 records, 2 tombstones" in out

    code, out, err = await hashfed(home, "export", "--format", "csv")
    assert code == 0, err
    rows = list(csv.DictReader(io.StringIO(out)))
    assert sorted(r["value"] for r in rows) == sorted(i["value"] for i in batch[2:])
    assert {r["labels"] for r in rows} == {"recruitment"} and {r["state"] for r in rows} == {
        "approved"
    }

    target = tmp_path / "export.jsonl"
    code, out, err = await hashfed(
        home, "export", "--format", "jsonl", "--include-retracted", "--out", str(target)
    )
    assert code == 0, err
    lines = [orjson.loads(line) for line in target.read_bytes().splitlines()]
    assert len(lines) == 12 and sum(line["state"] == "withdrawn" for line in lines) == 2

    with LocalStore.open(store_path) as store, store.locked():
        code, out, err = await hashfed(home, "pull")
    assert code == 1
    assert f"another 'hashfed pull' (pid {os.getpid()})" in err

    with LocalStore.open(store_path) as store:
        _set_cursor(store, "bogus")
    code, out, err = await hashfed(home, "pull")
    assert code == 3 and "hashfed pull --resync" in err
    code, out, err = await hashfed(home, "pull", "--resync")
    assert code == 0, err
    assert "Full resync" in err and "Pulled 14 versions" in err
