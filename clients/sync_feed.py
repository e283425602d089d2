"""Pulling the feed into the local store: incremental, resumable, never skipping.

:func:`pull` follows the server's cursor from where the store stopped and
applies record versions in transactions of :data:`COMMIT_EVERY_VERSIONS`,
each committing, with the versions, the cursor just after the last of them.
Whatever stops a pull (Ctrl-C, a broken connection, a crash) the store holds
a prefix of the feed and the cursor that continues it: the next pull resumes
exactly there, and re-applying a version is harmless anyway.

Policies:

- **Streaming.** When the store is more than one JSON page behind the log
  (``GET /v1/me`` gives the log's size), the pull streams NDJSON, one request
  per :data:`STREAM_REQUEST_VERSIONS`; otherwise, or with ``stream=False``,
  it reads JSON pages. Mid-stream commits use the cursor the server itself
  would give after that version (:func:`federation.log.feed.encode_cursor`).
- **Validation.** Every item is checked before anything is applied: shape
  and types, a known state, a normalised value whose record id matches, log
  indices strictly increasing. A bad item stops the pull with
  :class:`FeedItemInvalid` naming its index; the versions before it are
  committed, it and everything after are not, so the next pull fails the
  same way until the server is fixed — loudly, never wedged in silence.
  A stream is checked a list of lines at a time, column by column
  (:func:`parse_lines`); a list that fails goes through :func:`parse_version`
  line by line, which finds the bad item and says what is wrong with it.
- **Leaves.** A streamed line is the log leaf's exact bytes, and is stored
  as it came; a JSON page's items are encoded again (canonical JSON, which
  is what the server's leaves are).
- **Resync.** If the server refuses the store's cursor, or its log is
  shorter than what the store already pulled (a reset or restored server),
  :class:`CursorRejected` is raised and nothing changes. A full resync is
  deliberate, never automatic (it discards the member's working copy and
  re-downloads everything): ``pull(..., resync=True)`` deletes the local
  records in the same transaction as the first batch from the start of the
  log, then pulls as a first pull would.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import operator
import re
import time
from collections.abc import AsyncGenerator, Callable
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from itertools import chain, islice
from typing import Any, cast

import aiohttp
import orjson

from clients.client import FederationClient
from clients.errors import MalformedRequest, TransportError
from clients.store import (
    STATES,
    TOMBSTONE_STATES,
    ApplyCounts,
    LocalStore,
    RecordVersion,
    VersionBatch,
    normalize_server,
)
from clients.verify import remember, spot_check, verify_checkpoint
from federation.log.feed import MAX_PAGE, decode_cursor, encode_cursor
from federation.protocol.problems import HashfedError
from federation.protocol.signals import normalize_signal, record_id, record_ids
from federation.protocol.statements import canonical_json

# Versions per store transaction (each commits its cursor). Every commit writes
# each B-tree page the batch touched, and random record ids touch a page per
# row: 20,000 costs ~15 % less CPU than 5,000 and loses at most ~1 s of work.
COMMIT_EVERY_VERSIONS = 20_000
STREAM_REQUEST_VERSIONS = 100_000  # versions asked of one NDJSON request; the next resumes
DEFAULT_PAGE_SIZE = MAX_PAGE

Progress = Callable[["PullResult"], None]


@dataclass
class PullResult:
    """What a pull did; also handed to the progress callback after every commit.

    ``versions`` counts the versions received and committed; each is one of
    ``new`` (created a record), ``updated``, ``tombstones`` (a withdrawal or
    retraction) or ``skipped`` (already held). ``held`` and
    ``held_tombstones`` count the store's rows at the end. Positions are log
    indices: the pull started at ``start_position`` and has committed
    everything before ``position``; the server's log had ``log_size`` leaves.
    """

    versions: int = 0
    new: int = 0
    updated: int = 0
    tombstones: int = 0
    skipped: int = 0
    held: int = 0
    held_tombstones: int = 0
    start_position: int = 0
    position: int = 0
    log_size: int = 0
    streamed: bool = False
    resynced: bool = False
    requests: int = 0
    seconds: float = 0.0
    checkpoint_size: int = 0  # the signed checkpoint verified on this pull
    proved_index: int | None = None  # a stored version proved included in it
    log_key_first_use: bool = False  # the log key was taken from the server this time

    def as_dict(self) -> dict[str, Any]:
        """The result as plain JSON-ready data (for ``--json``)."""
        return asdict(self)


class SyncError(Exception):
    """A pull stopped; ``result`` says what was committed before it did."""

    def __init__(self, detail: str, result: PullResult | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.result = result or PullResult()


class FeedItemInvalid(SyncError):
    """The server sent an item the client refuses; nothing from it onwards was applied."""

    def __init__(self, index: int | None, detail: str, result: PullResult | None = None) -> None:
        where = f"feed item at log index {index}" if index is not None else "feed item"
        super().__init__(f"{where} is malformed: {detail}", result)
        self.index = index


class CursorRejected(SyncError):
    """The server no longer honours the store's cursor; only a full resync can continue."""


class FeedInterrupted(SyncError):
    """The connection broke off mid-pull; what arrived before it is committed."""


_STRING_FIELDS = ("record", "signal_type", "value", "state", "cause")
_INT64 = 2**63  # integers the store (SQLite INTEGER) can hold


def _canonical_version() -> re.Pattern[str]:
    """A line holding one version leaf exactly as this client knows it, canonical JSON.

    Members in sorted order, no whitespace, strings without escapes, integers
    in JSON's form and in the store's range, a known kind and state: whatever
    it accepts is JSON that :func:`parse_version`'s shape and type checks
    accept too. It captures what the store's row needs: index, record,
    signal_type, state and value. Anything else (a member a newer server
    added, an escaped string) is left to the slower, general checks.
    """
    text = r'"[^"\\\x00-\x1f]*"'  # a JSON string with no escape and no control character
    texts = rf"(?:{text}(?:,{text})*)?"
    natural = r"(?:0|[1-9][0-9]{0,17})"  # below 10**18 < 2**63
    integer = rf"-?{natural}"
    states = "|".join(re.escape(state) for state in sorted(STATES))
    return re.compile(
        r'^\{"cause":"[0-9a-f]{64}"'
        rf',"contributors":\[{texts}\]'
        r',"disputed":(?:true|false)'
        rf',"index":({natural})'
        r',"kind":"version"'
        rf',"labels":\[{texts}\]'
        rf',"opinions":\{{(?:{text}:{integer}(?:,{text}:{integer})*)?\}}'
        r',"record":"([0-9a-f]{32})"'
        r',"signal_type":"([a-z0-9_]{1,40})"'
        rf',"state":"({states})"'
        rf',"time":{integer}'
        r',"value":"([^"\\\x00-\x1f]*)"'
        r',"version":[1-9][0-9]{0,17}\}$',
        re.MULTILINE,
    )


_CANONICAL = _canonical_version()
_MEMBERS = operator.itemgetter(
    "kind", "index", "record", "version", "signal_type", "value", "state", "labels",
    "contributors", "cause", "time",
)  # fmt: skip
_STR = frozenset({str})
_INT = frozenset({int})
_LIST = frozenset({list})
_KIND = frozenset({"version"})


def parse_lines(lines: list[bytes], after: int) -> VersionBatch | None:
    """The versions of a list of streamed lines, if every line is a well-formed one.

    The checks of :func:`parse_version`, over the whole list at once (C
    loops rather than Python ones), plus log indices strictly increasing
    from above ``after``. The lines themselves are the leaves. Returns None
    if any line fails, or is not a version at all (the trailer, a blank
    line, not JSON): :func:`parse_version` then takes the lines one by one,
    to stop at the right one with the right complaint.
    """
    if not lines:
        return VersionBatch()
    try:
        text = b"\n".join(lines).decode()
    except UnicodeDecodeError:
        text = ""
    found = _CANONICAL.findall(text)
    if len(found) == len(lines) and text.count("\n") == len(lines) - 1:
        # Every line is a canonical version leaf: only the values are left to check.
        digits, records, types, states, values = map(list, zip(*found, strict=True))
        return _checked(list(map(int, digits)), records, types, values, states, lines, after)
    return _parse_json_lines(lines, after)


def _checked(
    indices: list[int],
    records: list[str],
    types: list[str],
    values: list[str],
    states: list[str],
    lines: list[bytes],
    after: int,
) -> VersionBatch | None:
    """The batch, if the indices increase from above ``after`` and every value and id is right."""
    try:
        well_formed = (
            indices[0] > after
            and all(map(operator.lt, indices, islice(indices, 1, None)))
            and list(map(normalize_signal, types, values)) == values
            and record_ids(types, values) == records
        )
    except HashfedError:  # an unknown type, a value the type refuses
        return None
    return VersionBatch(indices, records, types, values, states, lines) if well_formed else None


def _parse_json_lines(lines: list[bytes], after: int) -> VersionBatch | None:
    """:func:`parse_lines` for lines that are not canonical leaves as this client knows them."""
    loads = orjson.loads
    try:
        items = list(map(loads, lines))
        columns = list(zip(*map(_MEMBERS, items), strict=True))
    except (orjson.JSONDecodeError, KeyError, TypeError):  # not JSON, a member missing, no dict
        return None
    if not columns:
        return VersionBatch()
    kinds, indices, records, versions, types, values, states, labels, contributors, causes, at = (
        columns
    )
    try:
        well_formed = (
            _KIND.issuperset(kinds)
            and _INT.issuperset(map(type, indices))
            and indices[-1] < _INT64
            and _STR.issuperset(map(type, records))
            and _STR.issuperset(map(type, types))
            and _STR.issuperset(map(type, values))
            and _STR.issuperset(map(type, causes))
            and STATES.issuperset(states)  # strings, since the set holds only strings
            and _INT.issuperset(map(type, versions))
            and min(versions) >= 1
            and max(versions) < _INT64
            and _INT.issuperset(map(type, at))
            and min(at) >= -_INT64
            and max(at) < _INT64
            and _LIST.issuperset(map(type, labels))
            and _LIST.issuperset(map(type, contributors))
            and _STR.issuperset(map(type, chain.from_iterable(labels)))
            and _STR.issuperset(map(type, chain.from_iterable(contributors)))
        )
    except TypeError:  # an unhashable kind or state; values that do not compare
        return None
    if not well_formed:
        return None
    return _checked(
        list(indices), list(records), list(types), list(values), list(states), lines, after
    )


def parse_version(item: Any, leaf: bytes | None = None) -> RecordVersion:
    """Check one feed item and return it as a :class:`RecordVersion`.

    Raises :class:`FeedItemInvalid` (with the item's index when it has a
    usable one) for anything but a well-formed record version: wrong kind or
    types, an unknown state, a signal value that is not in normal form or a
    record id that does not belong to the signal. Members the client does not
    know are ignored (newer servers may add some) but kept in the leaf.
    ``leaf`` is the item's exact bytes when the stream gave them; otherwise
    the item is encoded again.
    """
    # The hot path: one pass of cheap checks; the precise complaint is worked
    # out by _diagnose only for an item that fails them.
    try:
        index = item["index"]
        record = item["record"]
        version = item["version"]
        signal_type = item["signal_type"]
        value = item["value"]
        state = item["state"]
        labels = item["labels"]
        contributors = item["contributors"]
        cause = item["cause"]
        at = item["time"]
        well_formed = (
            type(item) is dict
            and item["kind"] == "version"
            and type(index) is int
            and 0 <= index < _INT64
            and type(record) is str
            and type(version) is int
            and 1 <= version < _INT64
            and type(signal_type) is str
            and type(value) is str
            and type(state) is str
            and state in STATES
            and type(cause) is str
            and type(at) is int
            and -_INT64 <= at < _INT64
            and type(labels) is list
            and type(contributors) is list
        )
    except (KeyError, TypeError):
        well_formed = False
    if well_formed:
        for text in labels:
            if type(text) is not str:
                well_formed = False
        for text in contributors:
            if type(text) is not str:
                well_formed = False
    if not well_formed:
        raise _diagnose(item)
    try:
        normalized = normalize_signal(signal_type, value)
        expected = record_id(signal_type, normalized)
    except HashfedError as err:
        raise FeedItemInvalid(index, err.detail) from None
    if normalized != value:
        raise FeedItemInvalid(index, f"{signal_type} value {value!r} is not in normal form")
    if record != expected:
        raise FeedItemInvalid(
            index, f"record id {record!r} does not match the signal (expected {expected})"
        )
    if leaf is None:
        # The server's leaf is canonical JSON of exactly this object, so encoding
        # it again gives the leaf's bytes (what a Merkle proof covers).
        leaf = canonical_json(item)
    return RecordVersion(
        index,
        record,
        version,
        signal_type,
        value,
        state,
        tuple(labels),
        tuple(contributors),
        cause,
        at,
        leaf,
    )


def _diagnose(item: Any) -> FeedItemInvalid:
    """The precise complaint about an item that failed :func:`parse_version`'s checks."""
    if type(item) is not dict:
        return FeedItemInvalid(None, f"expected a JSON object, got {type(item).__name__}")
    index = item.get("index")
    if type(index) is not int or not 0 <= index < _INT64:
        return FeedItemInvalid(None, f"'index' must be a non-negative integer, got {index!r}")
    if item.get("kind") != "version":
        return FeedItemInvalid(index, f"'kind' must be 'version', got {item.get('kind')!r}")
    for name in (*_STRING_FIELDS, "version", "time", "labels", "contributors"):
        if name not in item:
            return FeedItemInvalid(index, f"missing member {name!r}")
    for name in _STRING_FIELDS:
        if type(item[name]) is not str:
            return FeedItemInvalid(index, f"{name!r} must be a string")
    version, at = item["version"], item["time"]
    if type(version) is not int or not 1 <= version < _INT64:
        return FeedItemInvalid(index, f"'version' must be a positive integer, got {version!r}")
    if type(at) is not int or not -_INT64 <= at < _INT64:
        return FeedItemInvalid(index, f"'time' must be a 64-bit integer, got {at!r}")
    for name in ("labels", "contributors"):
        values = item[name]
        if type(values) is not list or not all(type(x) is str for x in values):
            return FeedItemInvalid(index, f"{name!r} must be a list of strings")
    return FeedItemInvalid(
        index,
        f"unknown state {item['state']!r} (known: {', '.join(sorted(STATES))}); "
        "a newer hashfed may be needed",
    )


def _position_of(cursor: str | None) -> int | None:
    """The log position a cursor stands for, if it is in the format this client knows."""
    try:
        return decode_cursor(cursor)
    except HashfedError:
        return None


class _Pull:
    """One pull's state: the batch being built, and the batch the writer is committing.

    Parsing and validation run on the event loop while a single writer thread
    commits the previous batch (SQLite does its B-tree work without the GIL),
    so the network, the checks and the store overlap. At most one batch is in
    the writer's hands; batches commit in order, each with its cursor.
    """

    def __init__(
        self,
        client: FederationClient,
        store: LocalStore,
        result: PullResult,
        progress: Progress | None,
        writer: Executor,
        *,
        reset: bool,
    ) -> None:
        self.client = client
        self.store = store
        self.result = result
        self.progress = progress
        self.writer = writer
        self.reset = reset
        self.after: str | None = None if reset else store.cursor  # where the next request starts
        self.last_index = result.start_position - 1
        self.pending = VersionBatch()
        self.committing: tuple[asyncio.Future[ApplyCounts], int, str] | None = None

    def check(self, item: Any, leaf: bytes | None = None) -> None:
        """Validate one item and queue it."""
        version = parse_version(item, leaf)
        if version.idx <= self.last_index:
            raise FeedItemInvalid(
                version.idx,
                f"log index {version.idx} is not after the previous one ({self.last_index}); "
                "the feed must be in strictly increasing log order",
            )
        self.last_index = version.idx
        self.pending.append(version)

    async def accept(self, item: Any) -> None:
        """Validate one item and queue it; hand the batch to the writer when it is full."""
        self.check(item)
        await self.commit_full()

    def check_lines(self, lines: list[bytes]) -> dict[str, Any] | None:
        """Validate streamed lines and queue their versions; returns the trailer if one came.

        Lines after the trailer are ignored. A bad line raises
        :class:`FeedItemInvalid` (or ``orjson.JSONDecodeError``) with the good
        lines before it queued.
        """
        rest: list[bytes] = []  # the lines to take one by one
        batch = parse_lines(lines, self.last_index)
        if batch is None and len(lines) > 1:  # the last list, ending with the trailer, say
            batch = parse_lines(lines[:-1], self.last_index)
            rest = lines[-1:]
        if batch is None:
            rest = lines
        elif batch.idx:
            self.last_index = batch.idx[-1]
            self.pending.extend(batch)
        loads = orjson.loads
        for line in rest:
            if not line.strip():
                continue
            item = loads(line)
            if type(item) is dict and item.get("kind") == "end":
                return item
            self.check(item, line)
        return None

    async def commit_full(self) -> None:
        """Hand full batches of :data:`COMMIT_EVERY_VERSIONS` to the writer."""
        while len(self.pending) >= COMMIT_EVERY_VERSIONS:
            batch = self.pending.take(COMMIT_EVERY_VERSIONS)
            await self.commit(encode_cursor(batch.idx[-1] + 1), batch)

    async def commit(self, cursor: str | None = None, batch: VersionBatch | None = None) -> None:
        """Hand ``batch`` (default: all queued versions) and ``cursor`` to the writer.

        ``cursor`` defaults to just after the batch's last version.
        """
        if batch is None:
            batch, self.pending = self.pending, VersionBatch()
        if cursor is None:
            if not batch.idx:
                return
            cursor = encode_cursor(batch.idx[-1] + 1)
        await self.drain()
        apply = functools.partial(
            self.store.apply, batch, cursor, log_size=self.result.log_size, reset=self.reset
        )
        self.reset = False
        future = asyncio.get_running_loop().run_in_executor(self.writer, apply)
        self.committing = (future, len(batch), cursor)

    def handed_over(self) -> int:
        """Versions handed to the writer and not yet accounted for."""
        return 0 if self.committing is None else self.committing[1]

    async def drain(self) -> None:
        """Wait for the writer's batch to commit and account for it."""
        if self.committing is None:
            return
        future, count, cursor = self.committing
        self.committing = None
        counts = await future
        r = self.result
        r.versions += count
        r.new += counts.new
        r.updated += counts.updated
        r.tombstones += counts.tombstones
        r.skipped += counts.skipped
        position = _position_of(cursor)
        r.position = position if position is not None else r.position
        if self.progress is not None:
            self.progress(r)

    async def flush(self) -> None:
        """Commit everything queued (the good versions before a failure, say)."""
        await self.commit()
        await self.drain()

    def check_next_cursor(self, cursor: Any, where: str) -> str:
        """A server-given next cursor: a string not behind the versions it follows."""
        if not isinstance(cursor, str) or not cursor:
            raise FeedItemInvalid(None, f"{where} has no valid 'next_cursor'")
        position = _position_of(cursor)
        if position is not None and position <= self.last_index:
            raise FeedItemInvalid(
                None,
                f"{where} gives a cursor at position {position}, before version "
                f"{self.last_index} it already sent",
            )
        return cursor

    async def from_stream(self) -> None:
        while True:
            self.result.requests += 1
            # Versions received in this request (committed or queued).
            first = self.result.versions + len(self.pending) + self.handed_over()
            end: dict[str, Any] | None = None
            stream = cast(
                AsyncGenerator[list[bytes], None],
                self.client.stream_feed_lines(self.after, limit=STREAM_REQUEST_VERSIONS),
            )
            async with contextlib.aclosing(stream):
                async for lines in stream:
                    end = self.check_lines(lines)
                    if end is not None:
                        break
                    await self.commit_full()
            if end is None:
                raise FeedInterrupted("feed stream ended without its trailer")
            received = self.result.versions + len(self.pending) + self.handed_over() - first
            if end.get("count") != received or type(end.get("has_more")) is not bool:
                # Lines may be missing: committing what arrived could skip some.
                self.pending = VersionBatch()
                raise FeedItemInvalid(
                    None, f"stream trailer {end!r} does not match the {received} versions sent"
                )
            self.after = self.check_next_cursor(end.get("next_cursor"), "stream trailer")
            await self.commit(self.after)
            if not end["has_more"]:
                return

    async def from_pages(self, page_size: int) -> None:
        while True:
            self.result.requests += 1
            page = await self.client.feed_page(self.after, limit=page_size)
            items = page.get("items") if type(page) is dict else None
            if type(items) is not list or type(page.get("has_more")) is not bool:
                raise FeedItemInvalid(None, "feed page is not {items, next_cursor, has_more}")
            for item in items:
                await self.accept(item)
            self.after = self.check_next_cursor(page.get("next_cursor"), "feed page")
            await self.commit(self.after)
            if not page["has_more"]:
                return


async def pull(
    client: FederationClient,
    store: LocalStore,
    *,
    progress: Progress | None = None,
    page_size: int = DEFAULT_PAGE_SIZE,
    stream: bool = True,
    resync: bool = False,
    log_key: str | None = None,
) -> PullResult:
    """Bring ``store`` up to date with the server's feed; returns what changed.

    First, before anything is applied, the server's newest checkpoint is
    verified with ``log_key`` (a signed-note verifier key; else the one the
    store trusted before; else, on first use, the server's own, reported in
    the result) and must extend the checkpoint the store kept
    (:class:`clients.verify.HistoryChanged` otherwise). After the pull, the
    newest stored version is proved to be in that checkpoint and the
    checkpoint is kept for next time.

    Takes the store's lock (:class:`clients.store.StoreLocked` if another pull
    holds it) and binds the store to the client's server and organisation
    (:class:`clients.store.StoreBoundElsewhere` if it copies another).
    ``progress`` is called once before the first request and after every
    commit. ``stream=False`` reads JSON pages of ``page_size`` only;
    ``resync=True`` discards the local records and pulls from the start.

    Raises :class:`FeedItemInvalid`, :class:`CursorRejected` or
    :class:`FeedInterrupted` (each carrying the partial :class:`PullResult`),
    or a :class:`clients.errors.FederationError` the server answered with.
    If the pull is cancelled, the batch already handed to the store commits
    before this returns; later versions are left for the next pull.
    """
    started = time.perf_counter()
    with store.locked():
        me = await client.me()
        store.bind(normalize_server(str(client.server)), client.identity.org)
        verified = await verify_checkpoint(client, store, log_key)
        log_size = me.get("log_size")
        if type(log_size) is not int:
            raise SyncError(f"/v1/me gave no usable log size: {log_size!r}")
        cursor = None if resync else store.cursor
        position = _position_of(cursor)
        result = PullResult(log_size=log_size, resynced=resync)
        if cursor is not None and position is not None and position > log_size:
            raise CursorRejected(
                f"the server's log has {log_size} entries but this store already pulled up to "
                f"position {position}: the server's history was reset or restored from a backup. "
                f"Nothing was changed locally. {_RESYNC_ADVICE}",
                result,
            )
        result.start_position = result.position = position or 0
        behind = log_size - result.start_position
        result.streamed = stream and (position is None or behind > page_size)
        if progress is not None:
            progress(result)
        if resync or store.is_empty():
            store.begin_bulk_load()
        else:
            store.ensure_indexes()  # after an interrupted bulk load
        # One writer thread: the store's connection is never used by two at once.
        writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hashfed-store")
        try:
            job = _Pull(client, store, result, progress, writer, reset=resync)
            await _run(job, page_size, result)
        except Exception:
            writer.shutdown(wait=True)
            store.end_bulk_load()
            raise
        finally:
            # Whatever happened (a cancel included), the batch handed over
            # finishes, committed or rolled back, before the lock is released.
            # A cancel leaves the id index to the next pull.
            writer.shutdown(wait=True)
        store.end_bulk_load()
        result.checkpoint_size = verified.checkpoint.size
        result.log_key_first_use = verified.first_use
        result.proved_index = await spot_check(client, store, verified)
        remember(store, verified)
        held = store.counts()
        result.held_tombstones = sum(n for _, s, n in held if s in TOMBSTONE_STATES)
        result.held = sum(n for _, _, n in held) - result.held_tombstones
        result.seconds = time.perf_counter() - started
        return result


async def _run(job: _Pull, page_size: int, result: PullResult) -> None:
    """Pull with ``job``, turning every way it can stop into a clear :class:`SyncError`."""
    try:
        if result.streamed:
            await job.from_stream()
        else:
            await job.from_pages(page_size)
        await job.drain()
    except FeedItemInvalid as err:
        await job.flush()  # the versions before the bad item are good
        err.result = result
        raise
    except MalformedRequest as err:
        if job.after is None:
            raise
        await job.flush()
        kept = (
            "Nothing was changed locally" if not result.versions else "What came before it is kept"
        )
        raise CursorRejected(
            f"the server refused the cursor ({err.detail}). {kept}. {_RESYNC_ADVICE}", result
        ) from err
    except orjson.JSONDecodeError as err:
        await job.flush()
        raise FeedItemInvalid(
            None,
            f"the server sent a line or page that is not JSON after log index "
            f"{job.last_index} ({err})",
            result,
        ) from err
    except (TransportError, TimeoutError, aiohttp.ClientError) as err:
        await job.flush()
        detail = err.detail if isinstance(err, TransportError) else repr(err)
        raise FeedInterrupted(
            f"the connection broke off during the pull ({detail}); everything received "
            "before it is committed, run the pull again to resume",
            result,
        ) from err


_RESYNC_ADVICE = "To discard the local copy and pull everything again, run 'hashfed pull --resync'"
