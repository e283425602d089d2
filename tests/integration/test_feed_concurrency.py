"""The feed never skips a committed version, even with concurrent writers.

Several aiohttp applications serve the same database on separate sockets. On
PostgreSQL each has its own :class:`Database` (own engine, own connection
pool, own in-process ``asyncio.Lock``), so the only thing that serialises
their appends is the ``SELECT … FOR UPDATE`` on ``log_head``, as between the
processes of ``hashfed server run --workers N``. On SQLite, which serves one
process only, they share one Database (see ``nodes``). At least four writer
tasks push many small batches as different members (partly to shared
records, so records also gain versions from several writers) while readers
poll ``GET /v1/feed`` with small pages all along. Every accepted version must be seen exactly once,
in log order, and no page may ever have stepped over an index that became
visible later ("allocated early, committed late").
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestServer
from sqlalchemy import insert, select, text

from clients.client import FederationClient, Identity
from federation.api.app import create_app
from federation.log.feed import decode_cursor
from federation.store.db import Database
from federation.store.schema import LEAF_VERSION, log, log_head
from tests.conftest import Federation

pytestmark = pytest.mark.slow

WRITERS = 5
BATCHES = 50
ITEMS = 20
SHARED_PER_BATCH = 4  # of ITEMS, drawn from a pool every writer also submits to
SHARED_POOL = 120
LABELS = ["recruitment"]


def md5_of(text_: str) -> str:
    return hashlib.md5(text_.encode()).hexdigest()


def batch_items(writer: int, batch: int) -> list[dict[str, Any]]:
    """``ITEMS`` distinct md5 items: mostly the writer's own, a few from a shared pool.

    The shared slots walk the pool with a stride, so a writer sometimes
    resubmits a shared value it already contributed (a "duplicate": no
    version) and often adds itself to a record another writer created (a
    new version of an existing record, i.e. contention on the same rows).
    """
    own = [md5_of(f"own-{writer}-{batch}-{i}") for i in range(ITEMS - SHARED_PER_BATCH)]
    shared = [
        md5_of(f"shared-{(batch * SHARED_PER_BATCH + k + 7 * writer) % SHARED_POOL}")
        for k in range(SHARED_PER_BATCH)
    ]
    return [{"signal_type": "md5", "value": v, "labels": LABELS} for v in own + shared]


MIN_MID_FLIGHT_PAGES = 3


@dataclass
class Page:
    """One feed page as the reader got it: where it started and what it held."""

    start: int
    indices: list[int]
    has_more: bool
    during_writes: bool  # asked for before every writer had its answer


@dataclass
class Reader:
    """A reader that follows the cursor and keeps every page it received."""

    name: str
    pages: list[Page] = field(default_factory=list)
    items: list[dict[str, Any]] = field(default_factory=list)

    @property
    def seen(self) -> list[int]:
        return [int(i["index"]) for i in self.items]

    def assert_read_mid_flight(self) -> None:
        """The reader got pages while writes were still landing."""
        during = [p for p in self.pages if p.during_writes]
        # A few non-empty pages while writes land make the reader's checks meaningful;
        # how many depends on scheduling, so the bar is low enough for a loaded CI box.
        assert sum(1 for p in during if p.indices) >= MIN_MID_FLIGHT_PAGES, (
            f"{self.name} barely read mid-flight"
        )

    def assert_followed_the_live_edge(self) -> None:
        """Mostly at the head of the log while writes landed.

        Skips happen only at the live edge (a page served while a later index
        is visible and an earlier one is not yet); a reader that lags behind
        the writers reads settled history and cannot catch one.
        """
        self.assert_read_mid_flight()
        during = [p for p in self.pages if p.during_writes]
        at_edge = sum(1 for p in during if not p.has_more)
        assert at_edge >= len(during) // 4, (
            f"{self.name} was at the head of the log for only {at_edge} of {len(during)} pages"
        )


@dataclass
class Accepted:
    """What the writers were told, statement by statement.

    A statement's leaf index comes back with its result, and its versions
    are the leaves right after it, one per accepted item (in an order the
    server chooses, so only the set of records is compared per statement).
    """

    by_statement: dict[int, list[str]] = field(default_factory=dict)  # leaf → records
    writer_of: dict[int, int] = field(default_factory=dict)  # statement leaf → writer

    @property
    def statements(self) -> int:
        return len(self.by_statement)

    def add(self, writer: int, result: dict[str, Any]) -> None:
        accepted = [r["record"] for r in result["results"] if r["status"] == "accepted"]
        assert result["counts"]["accepted"] == len(accepted)
        assert result["counts"]["refused"] == 0, result
        if not accepted:
            assert result["leaf_index"] is None
            return
        leaf = int(result["leaf_index"])
        assert leaf not in self.by_statement, f"leaf {leaf} handed to two statements"
        self.by_statement[leaf] = accepted
        self.writer_of[leaf] = writer

    def version_indices(self) -> set[int]:
        indices = {
            leaf + k for leaf, rids in self.by_statement.items() for k in range(1, len(rids) + 1)
        }
        assert len(indices) == sum(len(r) for r in self.by_statement.values()), "leaves overlap"
        assert not indices & self.by_statement.keys(), "a version leaf is also a statement leaf"
        return indices

    def versions_per_record(self) -> Counter[str]:
        return Counter(rid for rids in self.by_statement.values() for rid in rids)

    def interleavings(self) -> int:
        """How often consecutive statements in the log come from different writers."""
        order = [self.writer_of[i] for i in sorted(self.writer_of)]
        return sum(1 for a, b in itertools.pairwise(order) if a != b)

    def assert_matches(self, name: str, items: Sequence[dict[str, Any]]) -> None:
        """Each statement's versions carry its records; each record has versions 1…n."""
        by_idx = {int(i["index"]): i for i in items}
        for leaf, rids in self.by_statement.items():
            got = sorted(by_idx[leaf + k]["record"] for k in range(1, len(rids) + 1))
            assert got == sorted(rids), f"{name}: statement at {leaf} shows other records"
        versions: dict[str, list[int]] = {}
        for idx in sorted(by_idx):
            versions.setdefault(by_idx[idx]["record"], []).append(int(by_idx[idx]["version"]))
        for rid, seen in versions.items():
            assert seen == list(range(1, len(seen) + 1)), f"{name}: {rid} versions {seen}"
        assert {rid: len(v) for rid, v in versions.items()} == self.versions_per_record()


@dataclass
class Node:
    """One more federation server: its own app, Database (engine + lock) and socket."""

    db: Database
    server: TestServer

    @property
    def url(self) -> str:
        return str(self.server.make_url("")).rstrip("/")


@pytest.fixture
async def nodes(fed: Federation) -> AsyncIterator[list[Node]]:
    """``WRITERS`` extra servers on the same database.

    On PostgreSQL none shares a Database object (engine, pool, asyncio lock)
    with another or with ``fed``'s server: only the ``log_head`` row lock
    serialises their appends, exactly as between ``--workers N`` processes.

    On SQLite they all share ``fed.db``, i.e. the one-process configuration
    the server supports there (``--workers 1``; serve.py refuses more). With
    one Database per server the SQLite run fails: ``Database.appending``
    does not serialise appenders across connections on SQLite (pysqlite
    emits BEGIN only before the first INSERT and SQLite ignores FOR UPDATE,
    so two engines read the same ``log_head.size`` and the second append
    dies on ``UNIQUE constraint failed: statements.leaf_idx``).
    """
    shared = fed.db if fed.db.is_sqlite else None
    started: list[Node] = []
    try:
        for _ in range(WRITERS):
            db = shared or Database(fed.settings.resolved_database_url)
            server = TestServer(create_app(fed.settings, db), host="127.0.0.1")
            await server.start_server()
            started.append(Node(db, server))
        yield started
    finally:
        for node in started:
            await node.server.close()
            if node.db is not shared:
                await node.db.close()


async def write(
    url: str, identity: Identity, writer: int, accepted: Accepted, batches: int
) -> None:
    # retries=0: a server error must fail the test, not be papered over by a retry.
    async with FederationClient(url, identity, retries=0) as client:
        for batch in range(batches):
            accepted.add(writer, await client.submit(batch_items(writer, batch)))


async def poll(client: FederationClient, reader: Reader, done: asyncio.Event, limit: int) -> None:
    """Follow the cursor until the writers are done and a page says nothing is left.

    ``done`` is read *before* each request: a page without ``has_more`` asked
    for after every writer got its answer covers everything they committed.
    """
    cursor: str | None = None
    while True:
        finished = done.is_set()
        page = await client.feed_page(cursor, limit=limit)
        indices = [int(i["index"]) for i in page["items"]]
        reader.pages.append(
            Page(decode_cursor(cursor), indices, bool(page["has_more"]), not finished)
        )
        reader.items.extend(page["items"])
        cursor = page["next_cursor"]
        if indices:
            assert decode_cursor(cursor) == indices[-1] + 1
        else:
            assert page["has_more"] is False
            assert decode_cursor(cursor) == reader.pages[-1].start
        if finished and not page["has_more"]:
            return
        if not indices:
            await asyncio.sleep(0.002)


async def stream(client: FederationClient, reader: Reader, done: asyncio.Event) -> None:
    """The same, over NDJSON streams of at most 25 versions each."""
    cursor: str | None = None
    while True:
        finished = done.is_set()
        start = decode_cursor(cursor)
        indices: list[int] = []
        end: dict[str, Any] = {}
        async for entry in client.stream_feed(cursor, limit=25):
            if entry["kind"] == "end":
                end = entry
            else:
                indices.append(int(entry["index"]))
                reader.items.append(entry)
        assert end["count"] == len(indices)
        reader.pages.append(Page(start, indices, bool(end["has_more"]), not finished))
        cursor = end["next_cursor"]
        if finished and not end["has_more"]:
            return
        if not indices:
            await asyncio.sleep(0.002)


async def run_workload(
    fed: Federation,
    nodes: Sequence[Node],
    readers: Sequence[tuple[Reader, str, int]],
    batches: int = BATCHES,
) -> Accepted:
    """Writers (one per node, one member each) against readers polling ``fed``'s server.

    ``readers``: (reader, "json" | "ndjson", page size).
    """
    identities = [await fed.admit(f"writer{w}") for w in range(len(nodes))]
    consumer = await fed.admit("watcher", roles=("consumer",))
    accepted = Accepted()
    done = asyncio.Event()
    async with FederationClient(fed.url, consumer, retries=0) as client:
        tasks = [
            asyncio.create_task(
                poll(client, r, done, limit) if kind == "json" else stream(client, r, done)
            )
            for r, kind, limit in readers
        ]
        try:
            await asyncio.gather(
                *(
                    write(n.url, ident, w, accepted, batches)
                    for w, (n, ident) in enumerate(zip(nodes, identities, strict=True))
                )
            )
            done.set()
            await asyncio.wait_for(asyncio.gather(*tasks), 60)
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
    return accepted


async def log_facts(db: Database) -> tuple[int, list[int], list[int]]:
    """(log_head.size, every idx in the log, the visible version idxs), read directly."""
    async with db.reading() as conn:
        size = int((await conn.execute(select(log_head.c.size))).scalar_one())
        all_idx = [
            int(i) for i in (await conn.execute(select(log.c.idx).order_by(log.c.idx))).scalars()
        ]
        visible = [
            int(i)
            for i in (
                await conn.execute(
                    select(log.c.idx)
                    .where(log.c.visible.is_(True), log.c.kind == LEAF_VERSION)
                    .order_by(log.c.idx)
                )
            ).scalars()
        ]
    return size, all_idx, visible


def assert_no_hole(size: int, all_idx: list[int]) -> None:
    assert all_idx == list(range(size)), "the log has a hole or a leaf past log_head.size"


def assert_exactly_once(reader: Reader, accepted: Accepted, visible: list[int]) -> None:
    """Seen == accepted == visible in the log: nothing skipped, nothing twice, in order."""
    seen = reader.seen
    dupes = [i for i, n in Counter(seen).items() if n > 1]
    assert not dupes, f"{reader.name} saw {len(dupes)} versions twice, e.g. {dupes[:5]}"
    pairs = Counter((i["record"], i["version"]) for i in reader.items)
    assert max(pairs.values(), default=1) == 1, f"{reader.name}: a (record, version) came twice"
    assert all(a < b for a, b in itertools.pairwise(seen)), (
        f"{reader.name}: log indices not strictly increasing"
    )
    expected = accepted.version_indices()
    skipped = sorted(expected - set(seen))
    assert not skipped, f"{reader.name} skipped {len(skipped)} accepted versions: {skipped[:10]}"
    extra = sorted(set(seen) - expected)
    assert not extra, f"{reader.name} saw versions no writer was told about: {extra[:10]}"
    accepted.assert_matches(reader.name, reader.items)
    assert seen == visible, "the feed and the log table disagree on the visible versions"


def assert_no_page_stepped_over(reader: Reader, visible: list[int]) -> None:
    """Mid-flight: no page ever moved the cursor past an index that became visible later.

    A page that started at cursor position ``p`` and ended at index ``q``
    told the reader "every visible version in [p, q] is here". If a version
    inside that window committed after the page was served (a sequence number
    allocated early and committed late), the window holds an index the page
    did not: the reader's cursor is already past it, so it would never see
    it. Also, consecutive pages must abut: each starts where the last ended.
    """
    visible_set = set(visible)
    position = 0
    for n, page in enumerate(reader.pages):
        assert page.start == position, (
            f"{reader.name} page {n} starts at {page.start}, not {position}"
        )
        if not page.indices:
            continue
        window = {i for i in visible_set if page.start <= i <= page.indices[-1]}
        missed = sorted(window - set(page.indices))
        assert not missed, (
            f"{reader.name} page {n} covered [{page.start}, {page.indices[-1]}] but did not "
            f"include {missed[:10]}, which became visible later: the feed skipped them"
        )
        position = page.indices[-1] + 1


def check_reader(reader: Reader, accepted: Accepted, visible: list[int]) -> None:
    assert_exactly_once(reader, accepted, visible)
    assert_no_page_stepped_over(reader, visible)


async def test_concurrent_writers_feed_sees_every_version_exactly_once(
    fed: Federation, nodes: list[Node]
) -> None:
    reader = Reader("reader(limit=7)")
    # Small pages lag behind five writers; a second reader with large pages stays at
    # the head of the log, where a version committed out of order would be stepped over.
    head = Reader("head follower(limit=1000)")
    accepted = await run_workload(fed, nodes, [(reader, "json", 7), (head, "json", 1000)])

    # The workload really was concurrent and really made versions > 1.
    assert accepted.statements == WRITERS * BATCHES
    assert len(accepted.version_indices()) >= WRITERS * BATCHES * (ITEMS - SHARED_PER_BATCH)
    assert max(accepted.versions_per_record().values()) >= min(3, SHARED_PER_BATCH)
    # The writers' appends really interleaved, and the readers read along.
    assert accepted.interleavings() >= WRITERS * BATCHES // 8
    reader.assert_read_mid_flight()
    head.assert_followed_the_live_edge()

    size, all_idx, visible = await log_facts(fed.db)
    check_reader(reader, accepted, visible)
    check_reader(head, accepted, visible)
    assert_no_hole(size, all_idx)


async def test_no_page_ever_skips_an_index_that_commits_later(
    fed: Federation, nodes: list[Node]
) -> None:
    readers = [
        (Reader("reader(limit=2)"), "json", 2),
        (Reader("reader(limit=7)"), "json", 7),
        (Reader("reader(limit=50)"), "json", 50),
        (Reader("reader(ndjson, 25)"), "ndjson", 25),
        *((Reader(f"head follower {n}(limit=1000)"), "json", 1000) for n in range(3)),
    ]
    accepted = await run_workload(fed, nodes, readers, batches=15)
    size, all_idx, visible = await log_facts(fed.db)
    for reader, _, _ in readers:
        check_reader(reader, accepted, visible)
        reader.assert_read_mid_flight()
    for reader, _, _ in readers[-3:]:
        reader.assert_followed_the_live_edge()
    assert_no_hole(size, all_idx)


async def test_the_page_check_catches_a_late_commit(fed: Federation) -> None:
    """The checker is not vacuous: fake "allocated early, committed late" and it fails.

    Two raw transactions bypass the append lock: one writes version leaf
    ``n`` and stays open, the other writes ``n + 1`` and commits. A reader
    polling now is handed ``n + 1`` and moves its cursor past ``n``; when
    ``n`` commits, :func:`assert_no_page_stepped_over` must name it.
    """
    consumer = await fed.admit("watcher", roles=("consumer",))
    size, _, _ = await log_facts(fed.db)

    def row(idx: int) -> dict[str, Any]:
        leaf = {"kind": "version", "index": idx, "record": f"fake{idx}", "version": 1}
        return {"idx": idx, "kind": LEAF_VERSION, "leaf": orjson.dumps(leaf), "visible": True}

    reader = Reader("reader")
    late_db = Database(fed.settings.resolved_database_url)
    try:
        async with late_db.engine.connect() as late, fed.client(consumer, retries=0) as client:
            if not late_db.is_sqlite:
                # Leaf n is written but its transaction stays open…
                await late.begin()
                await late.execute(insert(log), [row(size)])
            # …while leaf n + 1 commits (SQLite, one writer at a time: n simply comes later).
            async with fed.db.writing() as conn:
                await conn.execute(insert(log), [row(size + 1)])
            done = asyncio.Event()
            done.set()
            await poll(client, reader, done, 7)
            if late_db.is_sqlite:
                async with fed.db.writing() as conn:
                    await conn.execute(insert(log), [row(size)])
            else:
                await late.commit()
    finally:
        await late_db.close()
    _, _, visible = await log_facts(fed.db)
    assert size + 1 in reader.seen and size not in reader.seen
    with pytest.raises(AssertionError, match="feed skipped them"):
        assert_no_page_stepped_over(reader, visible)
    # Clean up the fake leaves so the fixture's database stays consistent.
    async with fed.db.writing() as conn:
        await conn.execute(text("DELETE FROM log WHERE idx >= :n"), {"n": size})
