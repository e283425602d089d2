"""Record statements, from signed bytes to records, contributions, versions and inboxes.

Items are validated before the append lock is taken (pure work). Inside it,
the state of every record the statement touches is loaded in a few queries,
each item goes through the pure machine (:mod:`federation.governance.machine`),
and the changes are written with bulk statements. A refused item or a
duplicate writes nothing; a statement that changes nothing is not logged.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable, Generator, Iterable, Sequence
from dataclasses import dataclass, field
from itertools import count
from operator import itemgetter
from typing import Any, NamedTuple, TypeVar, cast

import orjson
from sqlalchemy import and_, bindparam, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from federation.governance import machine
from federation.governance.machine import Dispute, RecordState
from federation.governance.policy import PolicyInForce
from federation.governance.rules import (
    Action,
    DisputeReason,
    OpinionKind,
    RejectReason,
    State,
    Tally,
)
from federation.identities.service import Principal
from federation.log.append import LogBatch
from federation.log.feed import log_size
from federation.protocol.items import (
    MAX_ITEMS_PER_STATEMENT,
    MAX_NOTE_CHARS,
    SIGNAL_MEMBERS,
    bounded_text,
    check_members,
    parse_labels,
    parse_signal,
    parse_submission,
)
from federation.protocol.problems import HashfedError, Problem
from federation.protocol.statements import SignedStatement, StatementType, canonical_json
from federation.protocol.taxonomy import Taxonomy
from federation.store.bulk import Inserts, insert_rows
from federation.store.db import Database, chunks, one_of
from federation.store.schema import contributions, disputes, notifications, records

CONTRIBUTION_ACTIVE = "active"
CONTRIBUTION_WITHDRAWN = "withdrawn"

UPSERT_CHUNK_ROWS = 2_000
# Items checked between two hand-backs to the event loop (about 3 ms of work).
PREPARE_STEP_ITEMS = 500
# Items applied, or new records encoded, between two hand-backs in a draft.
DRAFT_STEP_ITEMS = 1_000

T = TypeVar("T")

ACCEPTED = "accepted"
DUPLICATE = "duplicate"
REFUSED = "refused"

RECORD_COLUMNS = (
    "id",
    "signal_type",
    "value",
    "state",
    "labels",
    "contributors",
    "version",
    "published",
    "head_idx",
    "created_at",
    "updated_at",
    "gov",
)
CONTRIBUTION_COLUMNS = (
    "record_id",
    "org_id",
    "status",
    "labels",
    "statement_id",
    "note",
    "ref",
    "updated_idx",
)
NOTIFICATION_COLUMNS = ("org_id", "idx", "seq", "kind", "record_id", "dispute_id", "detail")

_HEADER_KEYS = frozenset({"type", "org", "key", "created", "v", "nonce"})
_STATEMENT_KEYS = {
    StatementType.SUBMISSIONS: _HEADER_KEYS | {"items"},
    StatementType.WITHDRAWALS: _HEADER_KEYS | {"items", "reason"},
    StatementType.REVIEWS: _HEADER_KEYS | {"items"},
    StatementType.OPINIONS: _HEADER_KEYS | {"items"},
    StatementType.DISPUTE_OPEN: _HEADER_KEYS | {"record", "reason", "note"},
    StatementType.DISPUTE_RESOLVE: _HEADER_KEYS | {"dispute", "outcome", "labels", "note"},
}
_REVIEW_KEYS = frozenset({"record", "decision", "reason", "note"})
_OPINION_KEYS = frozenset({"record", "kind"})
_DECISIONS = {"approve": Action.APPROVE, "reject": Action.REJECT,
              "request_changes": Action.REQUEST_CHANGES}  # fmt: skip
_OUTCOMES = {"uphold": Action.UPHOLD, "retract": Action.RETRACT}


# ---------------------------------------------------------------- validation


class Item(NamedTuple):
    """One validated item: which record, and what the statement says about it.

    Immutable; a named tuple because a frozen dataclass took 2.8 µs to build,
    a third of the cost of checking a submitted item."""

    position: int
    record_id: str
    signal_type: str = ""
    value: str = ""
    labels: tuple[str, ...] = ()
    note: str | None = None
    ref: str | None = None
    action: Action | None = None
    reason: str | None = None
    kind: OpinionKind | None = None


@dataclass(slots=True)
class Prepared:
    """Validated items plus the results already decided (refusals)."""

    items: list[Item]
    results: list[dict[str, Any] | None]
    # For single-record statements (disputes): their checked members.
    extra: dict[str, Any] = field(default_factory=dict)

    def fresh(self) -> Prepared:
        """A copy to apply: applying fills in the results list, which this keeps as checked."""
        return Prepared(self.items, list(self.results), self.extra)


def _refusal(position: int, err: HashfedError) -> dict[str, Any]:
    return {
        "index": position,
        "status": REFUSED,
        "problem": {"type": err.problem.uri, "title": err.problem.title, "detail": err.detail},
    }


def _check_members(statement: SignedStatement) -> None:
    unknown = set(statement.payload) - _STATEMENT_KEYS[StatementType(statement.type)]
    if unknown:
        raise HashfedError(
            Problem.STATEMENT_MALFORMED,
            f"unknown member(s) in {statement.type}: {', '.join(sorted(unknown))}",
        )


def _items_of(statement: SignedStatement) -> list[Any]:
    _check_members(statement)
    items = statement.payload.get("items")
    if not isinstance(items, list) or not items:
        raise HashfedError(Problem.STATEMENT_MALFORMED, "'items' must be a non-empty list")
    if len(items) > MAX_ITEMS_PER_STATEMENT:
        raise HashfedError(
            Problem.STATEMENT_MALFORMED,
            f"a statement holds at most {MAX_ITEMS_PER_STATEMENT} items, got {len(items)}; "
            "split the batch",
        )
    return items


def _record_ref(raw: dict[str, Any], key: str = "record") -> str:
    rid = raw.get(key)
    if not isinstance(rid, str) or len(rid) != 32 or not all(c in "0123456789abcdef" for c in rid):
        raise HashfedError(Problem.MALFORMED_REQUEST, f"'{key}' must be a 32-hex record id")
    return rid


def _choice(raw: dict[str, Any], key: str, choices: Iterable[str]) -> str:
    value = raw.get(key)
    options = sorted(choices)
    if value not in options:
        raise HashfedError(
            Problem.MALFORMED_REQUEST, f"'{key}' must be one of {', '.join(options)}; got {value!r}"
        )
    return str(value)


def _each(statement: SignedStatement, parse: Callable[[int, Any], Item]) -> Steps[Prepared]:
    """Parse every item, pausing every :data:`PREPARE_STEP_ITEMS` (see :func:`prepare_async`)."""
    raw_items = _items_of(statement)
    prepared = Prepared(items=[], results=[None] * len(raw_items))
    seen: set[str] = set()
    for position, raw in enumerate(raw_items):
        if position and not position % PREPARE_STEP_ITEMS:
            yield
        try:
            item = parse(position, raw)
            if item.record_id in seen:
                raise HashfedError(
                    Problem.DUPLICATE_ITEM, "the same record appears earlier in this statement"
                )
        except HashfedError as err:
            prepared.results[position] = _refusal(position, err)
            continue
        seen.add(item.record_id)
        prepared.items.append(item)
    return prepared


def prepare(statement: SignedStatement, taxonomy: Taxonomy) -> Prepared:
    """Validate a record statement's items (no I/O)."""
    return _run(_prepare_steps(statement, taxonomy))


async def prepare_async(statement: SignedStatement, taxonomy: Taxonomy) -> Prepared:
    """:func:`prepare`, handing the event loop back every few hundred items.

    Checking a 20,000-item statement takes over 100 ms of Python. In one go,
    it would hold up the append in progress, which needs the loop at each of
    its database round trips; in steps, that append gets the loop back soon.
    """
    return await _run_async(_prepare_steps(statement, taxonomy))


Steps = Generator[None, None, T]  # work that pauses (yields) between steps, then returns


def _run(steps: Steps[T]) -> T:
    """Run ``steps`` to the end in one go; their result."""
    try:
        while True:
            next(steps)
    except StopIteration as done:
        return cast(T, done.value)


async def _run_async(steps: Steps[T]) -> T:
    """Run ``steps`` to the end, handing the event loop back between steps; their result."""
    try:
        while True:
            next(steps)
            await asyncio.sleep(0)  # a pause between steps, not a wait for something
    except StopIteration as done:
        return cast(T, done.value)


def _prepare_steps(statement: SignedStatement, taxonomy: Taxonomy) -> Steps[Prepared]:
    stype = statement.type
    cache: dict[tuple[str, ...], tuple[str, ...]] = {}
    if stype == StatementType.SUBMISSIONS:

        def submission(position: int, raw: Any) -> Item:
            checked = parse_submission(raw, taxonomy, cache)
            return Item(
                position, checked.record_id, checked.signal_type, checked.value,
                labels=checked.labels, note=checked.note, ref=checked.ref,
            )  # fmt: skip

        return (yield from _each(statement, submission))
    if stype == StatementType.WITHDRAWALS:
        reason = statement.payload.get("reason")
        if reason is not None and (not isinstance(reason, str) or len(reason) > MAX_NOTE_CHARS):
            raise HashfedError(Problem.STATEMENT_MALFORMED, "'reason' must be a short string")

        def withdrawal(position: int, raw: Any) -> Item:
            signal_type, value, rid = parse_signal(check_members(raw, SIGNAL_MEMBERS))
            return Item(position, rid, signal_type, value)

        return (yield from _each(statement, withdrawal))
    if stype == StatementType.REVIEWS:

        def decision(position: int, raw: Any) -> Item:
            raw = check_members(raw, _REVIEW_KEYS)
            action = _DECISIONS[_choice(raw, "decision", _DECISIONS)]
            reason = None
            if action == Action.REJECT:
                reason = _choice(raw, "reason", (r.value for r in RejectReason))
            elif raw.get("reason") is not None:
                raise HashfedError(Problem.MALFORMED_REQUEST, "'reason' goes with reject only")
            note = bounded_text(
                raw, "note", MAX_NOTE_CHARS, required=action == Action.REQUEST_CHANGES
            )
            return Item(position, _record_ref(raw), action=action, reason=reason, note=note)

        return (yield from _each(statement, decision))
    if stype == StatementType.OPINIONS:

        def opinion(position: int, raw: Any) -> Item:
            raw = check_members(raw, _OPINION_KEYS)
            kind = OpinionKind(_choice(raw, "kind", (k.value for k in OpinionKind)))
            return Item(position, _record_ref(raw), kind=kind)

        return (yield from _each(statement, opinion))
    try:
        return _prepare_single(statement, taxonomy, cache)
    except HashfedError as err:
        if err.problem is not Problem.MALFORMED_REQUEST:
            raise
        # A single-record statement is refused whole: its fields are the statement's.
        raise HashfedError(Problem.STATEMENT_MALFORMED, err.detail) from err


def _prepare_single(
    statement: SignedStatement, taxonomy: Taxonomy, cache: dict[tuple[str, ...], tuple[str, ...]]
) -> Prepared:
    stype = statement.type
    _check_members(statement)
    payload = statement.payload
    if stype == StatementType.DISPUTE_OPEN:
        rid = _record_ref(payload)
        reason = _choice(payload, "reason", (r.value for r in DisputeReason))
        note = bounded_text(payload, "note", MAX_NOTE_CHARS, required=True)
        return Prepared([Item(0, rid, reason=reason, note=note)], [None])
    if stype == StatementType.DISPUTE_RESOLVE:
        dispute_id = _record_ref(payload, "dispute")
        outcome = _OUTCOMES[_choice(payload, "outcome", _OUTCOMES)]
        labels = payload.get("labels")
        if labels is not None and outcome != Action.UPHOLD:
            raise HashfedError(Problem.MALFORMED_REQUEST, "'labels' go with uphold only")
        checked = None if labels is None else parse_labels(labels, taxonomy, cache)
        note = bounded_text(payload, "note", MAX_NOTE_CHARS, required=True)
        return Prepared(
            [], [], extra={"dispute": dispute_id, "outcome": outcome, "labels": checked,
                           "note": note},
        )  # fmt: skip
    raise HashfedError(Problem.STATEMENT_WRONG_TYPE, f"{stype} is not a record statement")


# ------------------------------------------------------------------ storage


@functools.lru_cache(maxsize=4096)
def _json_sorted(values: tuple[str, ...]) -> str:
    return orjson.dumps(sorted(values)).decode()


_first = itemgetter(0)  # sort rows by key alone: half the cost of comparing whole tuples
_STATE_TEXT = {state: state.value for state in State}  # Enum.value is a slow property


def _quoted(text: str) -> str:
    """The JSON string of ``text``: between quotes as it is when only ASCII letters and digits."""
    return f'"{text}"' if text.isascii() and text.isalnum() else _dumps(text)


def _dumps(value: Any) -> str:
    """Canonical JSON of one string or list of strings, as text."""
    return orjson.dumps(value).decode()


def _json_list(values: Iterable[str]) -> str:
    """Sorted JSON list; label sets repeat across a batch, so the encoding is cached."""
    return _json_sorted(values if isinstance(values, tuple) else tuple(values))


def _gov_json(record: RecordState) -> str:
    doc: dict[str, Any] = {}
    if record.approvals:
        doc["approvals"] = sorted(record.approvals)
    if record.opinions:
        doc["opinions"] = record.opinions
    if record.open_disputes:
        doc["disputes"] = record.open_disputes
    if record.relabelled is not None:
        doc["relabelled"] = list(record.relabelled)
    return orjson.dumps(doc, option=orjson.OPT_SORT_KEYS).decode() if doc else "{}"


def state_from_row(row: Any) -> RecordState:
    """The machine state stored in a ``records`` row (contributions are loaded apart)."""
    gov = orjson.loads(row.gov) if row.gov != "{}" else {}
    relabelled = gov.get("relabelled")
    return RecordState(
        id=row.id,
        signal_type=row.signal_type,
        value=row.value,
        state=State(row.state),
        version=row.version,
        published=bool(row.published),
        approvals=set(gov.get("approvals", ())),
        opinions=dict(gov.get("opinions", {})),
        open_disputes=dict(gov.get("disputes", {})),
        relabelled=tuple(relabelled) if relabelled is not None else None,
    )


async def load_states(conn: AsyncConnection, ids: Sequence[str]) -> dict[str, RecordState]:
    """The machine state of each existing record among ``ids`` (with active contributions)."""
    found: dict[str, RecordState] = {}
    if not ids:
        return found
    for row in await conn.execute(
        select(
            records.c.id, records.c.signal_type, records.c.value, records.c.state,
            records.c.version, records.c.published, records.c.gov,
        ).where(one_of(conn, records.c.id, ids))
    ):  # fmt: skip
        found[row.id] = state_from_row(row)
    if not found:
        return found
    rows = await conn.execute(
        select(contributions.c.record_id, contributions.c.org_id, contributions.c.labels).where(
            and_(
                one_of(conn, contributions.c.record_id, list(found)),
                contributions.c.status == CONTRIBUTION_ACTIVE,
            )
        )
    )
    for r in rows:
        found[r.record_id].contributions[r.org_id] = tuple(orjson.loads(r.labels))
    return found


@dataclass(slots=True)
class _Encoded:
    """What :meth:`Changes.encode` makes of the new records.

    Per new record, in the statement's order: the template leaf's bytes before
    its log index (``heads``), between it and the time (``mids``) and after
    the time (``tails``), and whether consumers see it (``visible``); a record
    encoded the general way has empty bytes there and its version fields in
    ``general``, by position. ``rows``: the records'
    rows in id order, ``head_idx`` holding the record's position until
    :meth:`Changes.number` makes it its log index. ``contributions``: the new
    contributions' rows in key order, ``updated_idx`` filled in by number too.
    """

    heads: list[bytes] = field(default_factory=list)
    mids: list[bytes] = field(default_factory=list)
    tails: list[bytes] = field(default_factory=list)
    visible: list[bool] = field(default_factory=list)
    general: dict[int, dict[str, Any]] = field(default_factory=dict)
    rows: list[list[Any]] = field(default_factory=list)
    contributions: list[list[Any]] = field(default_factory=list)


@dataclass
class Changes:
    """What one statement did, gathered in memory and written at the end."""

    statement: SignedStatement
    now: int
    results: list[dict[str, Any] | None]
    new: list[RecordState] = field(default_factory=list)
    changed: list[RecordState] = field(default_factory=list)  # in the order they changed
    contributions_added: list[tuple[Any, ...]] = field(default_factory=list)
    contributions_readded: list[tuple[Any, ...]] = field(default_factory=list)
    contributions_withdrawn: list[tuple[str, str]] = field(default_factory=list)
    # (org, record, dispute, kind, detail); the log index is the record's new version.
    notices: list[tuple[str, str | None, str | None, str, dict[str, Any]]] = field(
        default_factory=list
    )
    head_idx: dict[str, int] = field(default_factory=dict)
    disputes_opened: list[dict[str, Any]] = field(default_factory=list)
    disputes_voted: list[dict[str, Any]] = field(default_factory=list)
    # A dispute vote short of quorum changes no record but must be in the log.
    log_anyway: bool = False
    _encoded: _Encoded | None = field(default=None, repr=False)
    _numbered: int | None = field(default=None, repr=False)  # the statement's log index

    def accept(self, item: Item, record: RecordState, *, new: bool = False) -> None:
        (self.new if new else self.changed).append(record)
        self.results[item.position] = {
            "index": item.position,
            "status": ACCEPTED,
            "record": record.id,
        }

    def duplicate(self, item: Item) -> None:
        self.results[item.position] = {
            "index": item.position, "status": DUPLICATE, "record": item.record_id,
        }  # fmt: skip

    def refuse(self, item: Item, err: HashfedError) -> None:
        self.results[item.position] = _refusal(item.position, err)

    def notify(
        self, orgs: Iterable[str], record: str | None, dispute: str | None, kind: str,
        **detail: Any,
    ) -> None:  # fmt: skip
        for org in sorted(set(orgs)):
            self.notices.append((org, record, dispute, kind, detail))

    def summary(self) -> dict[str, Any]:
        done = [r for r in self.results if r is not None]
        counts = {ACCEPTED: 0, DUPLICATE: 0, REFUSED: 0}
        for r in done:
            counts[r["status"]] += 1
        return {"statement_id": self.statement.id, "counts": counts, "results": done}

    @property
    def any(self) -> bool:
        """Whether the statement changes anything (or must be logged anyway)."""
        new = self.new or (self._encoded is not None and self._encoded.rows)  # see NewDraft
        return bool(new or self.changed or self.log_anyway)

    def encode(self) -> _Encoded:
        """The new records' leaves and rows, all but their log indices (pure, computed once).

        This is most of the Python work of writing a big statement, and it
        needs no log index: it can be done before the append lock is taken
        (see :func:`draft_record_statement`), leaving :meth:`write` only the
        indices to fill in.

        A record created here has version 1, one contributor and no governance
        history yet, so its leaf, the canonical JSON of
        :meth:`RecordState.version_fields`, is filled into a template instead of
        built as a dict and sorted: the same bytes (a property test compares the
        two, and the auditor rebuilds every leaf the general way), at a fraction
        of the cost. A record that does not fit the template takes the general
        path, with its fields encoded in :meth:`write`.
        """
        if self._encoded is None:
            self._encoded = _run(self._encode_steps())
        return self._encoded

    async def encode_async(self) -> _Encoded:
        """:meth:`encode`, handing the event loop back every :data:`DRAFT_STEP_ITEMS` records."""
        if self._encoded is None:
            self._encoded = await _run_async(self._encode_steps())
        return self._encoded

    def _encode_steps(self) -> Steps[_Encoded]:
        cause, now = self.statement.id, self.now
        encoded = _Encoded()
        heads: dict[str, tuple[bytes, str]] = {}  # org -> (leaf up to the index, contributors)
        labels_json: dict[tuple[str, ...], str] = {}
        types_json: dict[str, str] = {}
        leaf_heads, mids, tails, rows = encoded.heads, encoded.mids, encoded.tails, encoded.rows
        for position, r in enumerate(self.new):
            if position and not position % DRAFT_STEP_ITEMS:
                yield
            state = _STATE_TEXT[r.state]
            if (
                r.version != 1 or len(r.contributions) != 1 or r.approvals or r.opinions
                or r.open_disputes or r.relabelled is not None
            ):  # fmt: skip
                encoded.general[position] = r.version_fields(cause, now)
                leaf_heads.append(b"")
                mids.append(b"")
                tails.append(b"")
                rows.append(
                    [r.id, r.signal_type, r.value, state, _json_list(r.labels),
                     _json_list(r.contributors), r.version, r.published, position, now, now,
                     _gov_json(r)]
                )  # fmt: skip
                continue
            ((org, labels),) = r.contributions.items()
            head = heads.get(org)
            if head is None:
                contributors = _dumps([org])
                head = heads[org] = (
                    f'{{"cause":{_dumps(cause)},"contributors":{contributors},'
                    '"disputed":false,"index":'.encode(),
                    contributors,
                )
            lj = labels_json.get(labels)
            if lj is None:
                lj = labels_json[labels] = _json_sorted(tuple(set(labels)))
            tj = types_json.get(r.signal_type)
            if tj is None:
                tj = types_json[r.signal_type] = _dumps(r.signal_type)
            leaf_heads.append(head[0])
            # The record id is 32 hex digits (record_id()); the value may need escaping.
            mids.append(
                f',"kind":"version","labels":{lj},"opinions":{{}},"record":"{r.id}",'
                f'"signal_type":{tj},"state":"{state}","time":'.encode()
            )
            tails.append(f',"value":{_quoted(r.value)},"version":1}}'.encode())
            rows.append(
                [r.id, r.signal_type, r.value, state, lj, head[1], 1, r.published, position, now,
                 now, "{}"]
            )  # fmt: skip
        encoded.visible = [r.visible for r in self.new]
        # New rows go in key order: a batch of random ids then walks the
        # B-tree once, left to right, instead of jumping around it.
        rows.sort(key=_first)
        encoded.contributions = [[*c, 0] for c in sorted(self.contributions_added, key=_first)]
        return encoded

    def number(self, batch: LogBatch) -> tuple[int, list[list[Any]], list[list[Any]]]:
        """Fill the log indices and the time into the rows of :meth:`encode`; nothing is logged.

        The statement's leaf will be the next in ``batch`` and the new records'
        versions follow it, so the rows can be numbered, and their inserts
        started, before :meth:`add_leaves` builds the leaves themselves. Returns
        the statement's log index and the rows of new records and of new
        contributions (each in key order). Numbers once: a second call raises
        ``RuntimeError``. The time is :attr:`now` (a kept draft sets it when it
        is appended).
        """
        if self._numbered is not None:
            raise RuntimeError("Changes.number() has already numbered these changes")
        encoded = self.encode()
        leaf = batch.next_idx
        first, now = leaf + 1, self.now
        self._numbered = leaf
        for row in encoded.rows:
            row[8] += first  # head_idx: the record's position among the new ones, until now
            row[9] = row[10] = now  # created_at, updated_at
        for contribution in encoded.contributions:
            contribution[7] = leaf  # updated_idx
        return leaf, encoded.rows, encoded.contributions

    def add_leaves(self, batch: LogBatch) -> None:
        """Append the leaves of the statement and its versions at the indices :meth:`number` gave.

        Also notes each changed record's new log index in :attr:`head_idx`.
        """
        leaf, encoded = self._numbered, self.encode()
        if leaf is None or leaf != batch.next_idx:
            raise RuntimeError(
                f"leaves for index {leaf} cannot go at {batch.next_idx}: number() them first"
            )
        cause, now = self.statement.id, self.now
        batch.add_statement(self.statement)
        first = batch.next_idx
        leaves = [
            b"%b%d%b%d%b" % (head, idx, mid, now, tail)
            for idx, head, mid, tail in zip(
                count(first), encoded.heads, encoded.mids, encoded.tails, strict=False
            )
        ]
        for position, fields in encoded.general.items():
            idx = first + position
            leaves[position] = canonical_json(
                {**fields, "kind": "version", "index": idx, "time": now}
            )
        batch.add_version_leaves(first, leaves, encoded.visible)
        if self.notices:  # what they need of new records' log indices
            ids = (r.id for r in self.new)
            self.head_idx.update(zip(ids, range(first, batch.next_idx), strict=True))
        for record in self.changed:
            self.head_idx[record.id] = batch.add_version(
                record.version_fields(cause, now), visible=record.visible
            )

    async def write(self, conn: AsyncConnection, batch: LogBatch, inserts: Inserts) -> int | None:
        """Append the statement and its versions; write records, contributions, inboxes.

        The bulk inserts are queued on ``inserts`` (see :class:`Inserts`) as
        soon as their rows are numbered, so that the database thread inserts
        them while this thread builds the leaves.
        """
        if not self.any:
            return None
        leaf, new_rows, new_contributions = self.number(batch)
        await inserts.add(records, RECORD_COLUMNS, new_rows)
        await inserts.add(contributions, CONTRIBUTION_COLUMNS, new_contributions)
        self.add_leaves(batch)
        cause = self.statement.id
        if self.changed:
            await _update_records(conn, self.changed, self.head_idx, self.now)
        if self.contributions_readded:
            await _upsert_contributions(conn, [(*c, leaf) for c in self.contributions_readded])
        if self.contributions_withdrawn:
            await conn.execute(
                update(contributions)
                .where(
                    and_(
                        contributions.c.record_id == bindparam("b_record"),
                        contributions.c.org_id == bindparam("b_org"),
                    )
                )
                .values(status=CONTRIBUTION_WITHDRAWN, statement_id=cause, updated_idx=leaf),
                [{"b_record": r, "b_org": o} for r, o in self.contributions_withdrawn],
            )
        for row in self.disputes_opened:
            await conn.execute(disputes.insert().values(**row, opened_idx=leaf))
        for row in self.disputes_voted:
            resolved = {"resolved_idx": leaf} if row["state"] != "open" else {}
            await conn.execute(
                update(disputes)
                .where(disputes.c.id == row["id"])
                .values(state=row["state"], votes=row["votes"], **resolved)
            )
        await self._write_notices(conn, leaf)
        return leaf

    async def _write_notices(self, conn: AsyncConnection, leaf: int) -> None:
        rows = []
        seq: dict[tuple[str, int], int] = {}
        for org, rid, dispute_id, kind, detail in self.notices:
            idx = self.head_idx.get(rid, leaf) if rid else leaf
            n = seq[(org, idx)] = seq.get((org, idx), -1) + 1
            body = {"statement": self.statement.id, "by": self.statement.org, **detail}
            rows.append((org, idx, n, kind, rid, dispute_id, orjson.dumps(body).decode()))
        await insert_rows(conn, notifications, NOTIFICATION_COLUMNS, rows)


async def _update_records(
    conn: AsyncConnection, changed: list[RecordState], head_idx: dict[str, int], now: int
) -> None:
    stmt = (
        update(records)
        .where(records.c.id == bindparam("b_id"))
        .values(
            state=bindparam("b_state"),
            labels=bindparam("b_labels"),
            contributors=bindparam("b_contributors"),
            version=bindparam("b_version"),
            published=bindparam("b_published"),
            head_idx=bindparam("b_head_idx"),
            updated_at=bindparam("b_updated_at"),
            gov=bindparam("b_gov"),
        )
    )
    await conn.execute(
        stmt,
        [
            {
                "b_id": r.id,
                "b_state": r.state.value,
                "b_labels": _json_list(r.labels),
                "b_contributors": _json_list(r.contributors),
                "b_version": r.version,
                "b_published": r.published,
                "b_head_idx": head_idx[r.id],
                "b_updated_at": now,
                "b_gov": _gov_json(r),
            }
            for r in changed
        ],
    )


async def _upsert_contributions(conn: AsyncConnection, rows: list[tuple[Any, ...]]) -> None:
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    # 8 parameters a row: asyncpg (and stock SQLite) refuse more than ~32,767 per statement.
    for part in chunks(rows, UPSERT_CHUNK_ROWS):
        values = [dict(zip(CONTRIBUTION_COLUMNS, row, strict=True)) for row in part]
        stmt = dialect.insert(contributions).values(values)
        excluded = stmt.excluded
        await conn.execute(
            stmt.on_conflict_do_update(
                index_elements=["record_id", "org_id"],
                set_={c: getattr(excluded, c) for c in CONTRIBUTION_COLUMNS[2:]},
            )
        )


# ------------------------------------------------------------------ applying


def apply_items(
    statement: SignedStatement,
    principal: Principal,
    prepared: Prepared,
    states: dict[str, RecordState],
    open_disputes: dict[str, Dispute],
    policy: PolicyInForce,
    now: int,
) -> Changes:
    """Apply a validated record statement to in-memory states: pure, shared with the auditor.

    ``states`` must hold every existing record the statement names and
    ``open_disputes`` the dispute a resolution names; both are updated.
    """
    return _run(apply_steps(statement, principal, prepared, states, open_disputes, policy, now))


def apply_steps(
    statement: SignedStatement,
    principal: Principal,
    prepared: Prepared,
    states: dict[str, RecordState],
    open_disputes: dict[str, Dispute],
    policy: PolicyInForce,
    now: int,
) -> Steps[Changes]:
    """:func:`apply_items`, pausing every :data:`DRAFT_STEP_ITEMS` items."""
    changes = Changes(statement, now, prepared.results)
    stype = StatementType(statement.type)
    if stype == StatementType.DISPUTE_RESOLVE:
        _resolve(changes, principal, prepared, states, open_disputes, policy)
        return changes
    handler = _HANDLERS[stype]
    for position, item in enumerate(prepared.items):
        if position and not position % DRAFT_STEP_ITEMS:
            yield
        try:
            handler(changes, principal, item, states, open_disputes, policy)
        except HashfedError as err:
            if stype == StatementType.DISPUTE_OPEN:
                raise  # a single-record statement is refused whole
            changes.refuse(item, err)
    return changes


# Statements whose items name records and nothing else: they can be drafted.
DRAFTED_TYPES = frozenset(
    {StatementType.SUBMISSIONS, StatementType.WITHDRAWALS, StatementType.REVIEWS,
     StatementType.OPINIONS}
)  # fmt: skip


@dataclass(slots=True)
class Draft:
    """A record statement applied, before the append lock, to its records as they were.

    ``size`` is the log's size when the records were read (read first, so
    every version appended after it has a log index of ``size`` or more).
    Inside the lock, :func:`apply_record_statement` keeps the draft if no
    version of any of ``ids`` was appended since: the records are then
    exactly as the draft saw them, and the draft's changes are the ones the
    statement makes in log order. Otherwise it applies the statement again.
    """

    size: int
    ids: list[str]
    policy_version: int
    changes: Changes


async def draft_record_statement(
    db: Database,
    statement: SignedStatement,
    principal: Principal,
    prepared: Prepared,
    policy: PolicyInForce,
) -> Draft | None:
    """Apply ``statement`` to its records as they are now, outside the append lock.

    Loading the records, applying the rules and encoding the leaves and rows
    is most of the work of a big statement; done here, the append lock is
    held only to check that nothing changed, number the leaves and write.
    The database connection is held for the reads only. Returns None for
    statements that are not drafted (:data:`DRAFTED_TYPES`).
    """
    if statement.type not in DRAFTED_TYPES:
        return None
    ids = [item.record_id for item in prepared.items]
    async with db.reading() as conn:
        size = await log_size(conn)
        states = await load_states(conn, ids)
    # The draft's own results list: a statement applied again starts from the prepared one.
    mine = prepared.fresh()
    # In steps: the event loop serves the append in progress between them.
    now = int(time.time())
    changes = await _run_async(apply_steps(statement, principal, mine, states, {}, policy, now))
    await changes.encode_async()
    return Draft(size, ids, policy.version, changes)


@dataclass(slots=True)
class NewDraft:
    """A submissions statement applied as if none of its records existed (made in a helper).

    Most items of a big push name hashes the federation does not hold yet.
    Once the server has seen that none of the statement's records exists, a
    helper process applies it to no records at all and encodes the new ones
    (:func:`draft_as_new`), and the event loop is left to unpickle the rows.
    """

    now: int
    results: list[dict[str, Any] | None]
    encoded: _Encoded

    def adopt(
        self, statement: SignedStatement, size: int, ids: list[str], policy: PolicyInForce
    ) -> Draft:
        """The statement's :class:`Draft`: none of ``ids`` existed when the log had ``size``."""
        changes = Changes(statement, self.now, self.results, _encoded=self.encoded)
        return Draft(size, ids, policy.version, changes)


def draft_as_new(
    statement: SignedStatement,
    principal: Principal,
    prepared: Prepared,
    policy: PolicyInForce,
    now: int,
) -> NewDraft:
    """Apply a submissions statement to no existing records and encode it (pure)."""
    if statement.type != StatementType.SUBMISSIONS:
        raise ValueError(f"only submissions can be drafted as new records, not {statement.type}")
    mine = prepared.fresh()
    changes = apply_items(statement, principal, mine, {}, {}, policy, now)
    return NewDraft(now, changes.results, changes.encode())


async def touched_since(conn: AsyncConnection, size: int, ids: Sequence[str]) -> bool:
    """Whether a version of any record among ``ids`` has a log index of ``size`` or more."""
    if not ids:
        return False
    found = await conn.execute(
        select(records.c.id)
        .where(and_(records.c.head_idx >= size, one_of(conn, records.c.id, ids)))
        .limit(1)
    )
    return found.first() is not None


async def apply_record_statement(
    conn: AsyncConnection,
    batch: LogBatch,
    inserts: Inserts,
    statement: SignedStatement,
    principal: Principal,
    prepared: Prepared | None,
    policy: PolicyInForce,
    draft: Draft | None = None,
) -> dict[str, Any]:
    """Apply a validated record statement inside the append transaction.

    ``draft`` (from :func:`draft_record_statement` or :meth:`NewDraft.adopt`)
    is used if it still holds: same policy, and no version of its records
    appended since it was made. Otherwise the statement is applied here, to
    ``prepared``, or, if its items were checked in a helper only, to items
    checked again here, in steps (about 200 ms of Python for 50,000 items;
    asking the helper instead could queue the lock behind another
    statement's draft there).
    """
    if (
        draft is not None
        and draft.policy_version == policy.version
        and (draft.size == batch.start or not await touched_since(conn, draft.size, draft.ids))
    ):
        changes = draft.changes
        changes.now = int(time.time())  # the time of the append, as for a statement applied here
    else:
        if prepared is None:
            prepared = await prepare_async(statement, policy.taxonomy)
        found: dict[str, Dispute] = {}
        if statement.type == StatementType.DISPUTE_RESOLVE:
            dispute = await load_dispute(conn, prepared.extra["dispute"])
            ids = [dispute.record]
            found[dispute.id] = dispute
        else:
            ids = [item.record_id for item in prepared.items]
        states = await load_states(conn, ids)
        now = int(time.time())
        changes = apply_items(statement, principal, prepared, states, found, policy, now)
    leaf = await changes.write(conn, batch, inserts)
    summary = changes.summary()
    summary["leaf_index"] = leaf
    return summary


async def load_dispute(conn: AsyncConnection, dispute_id: str) -> Dispute:
    row = (await conn.execute(select(disputes).where(disputes.c.id == dispute_id))).first()
    if row is None:
        raise HashfedError(Problem.NOT_FOUND, f"no dispute {dispute_id}")
    return Dispute(
        id=row.id, record=row.record_id, opened_by=row.opened_by, reason=row.reason,
        state=row.state, tally=Tally(orjson.loads(row.votes)),
    )  # fmt: skip


_Handler = Callable[
    [Changes, Principal, Item, dict[str, RecordState], dict[str, Dispute], PolicyInForce], None
]


def _existing(item: Item, states: dict[str, RecordState]) -> RecordState:
    record = states.get(item.record_id)
    if record is None:
        raise HashfedError(Problem.NOT_FOUND, f"no record {item.record_id}")
    return record


def _submit(
    ch: Changes, who: Principal, item: Item, states: dict[str, RecordState],
    _disputes: dict[str, Dispute], policy: PolicyInForce,
) -> None:  # fmt: skip
    record = states.get(item.record_id)
    is_new = record is None
    if record is None:
        record = machine.new_record(item.record_id, item.signal_type, item.value)
    if not machine.submit(record, who.org_id, who.roles, item.labels, policy.rules):
        ch.duplicate(item)
        return
    states[record.id] = record
    ch.accept(item, record, new=is_new)
    row = (record.id, who.org_id, CONTRIBUTION_ACTIVE, _json_list(item.labels), ch.statement.id,
           item.note, item.ref)  # fmt: skip
    (ch.contributions_added if is_new else ch.contributions_readded).append(row)


def _withdraw(
    ch: Changes, who: Principal, item: Item, states: dict[str, RecordState],
    _disputes: dict[str, Dispute], policy: PolicyInForce,
) -> None:  # fmt: skip
    record = states.get(item.record_id)
    if record is None:
        raise HashfedError(
            Problem.NOT_CONTRIBUTOR, f"{who.org_id!r} has no contribution to {item.value}"
        )
    machine.withdraw(record, who.org_id, who.roles)
    ch.accept(item, record)
    ch.contributions_withdrawn.append((record.id, who.org_id))


def _review(
    ch: Changes, who: Principal, item: Item, states: dict[str, RecordState],
    _disputes: dict[str, Dispute], policy: PolicyInForce,
) -> None:  # fmt: skip
    record = _existing(item, states)
    assert item.action is not None
    if not machine.review(record, who.org_id, who.roles, item.action, policy.rules):
        ch.duplicate(item)
        return
    ch.accept(item, record)
    ch.notify(
        record.contributions, record.id, None, f"review.{item.action.value}",
        state=record.state.value, reason=item.reason, note=item.note,
        approvals=len(record.approvals), required=policy.rules.approvals_required,
    )  # fmt: skip


def _opinion(
    ch: Changes, who: Principal, item: Item, states: dict[str, RecordState],
    _disputes: dict[str, Dispute], policy: PolicyInForce,
) -> None:  # fmt: skip
    record = _existing(item, states)
    assert item.kind is not None
    was = record.disputed
    if not machine.opine(record, who.org_id, who.roles, item.kind):
        ch.duplicate(item)
        return
    ch.accept(item, record)
    if record.disputed and not was:
        ch.notify(record.contributions, record.id, None, "record.flagged",
                  opinions=record.opinion_counts())  # fmt: skip


def _dispute(
    ch: Changes, who: Principal, item: Item, states: dict[str, RecordState],
    open_disputes: dict[str, Dispute], policy: PolicyInForce,
) -> None:  # fmt: skip
    record = _existing(item, states)
    dispute = Dispute(id=ch.statement.id[:32], record=record.id, opened_by=who.org_id,
                      reason=str(item.reason))  # fmt: skip
    machine.open_dispute(record, dispute, who.roles)
    open_disputes[dispute.id] = dispute
    ch.accept(item, record)
    ch.notify(
        [*record.contributions, who.org_id], record.id, dispute.id, "dispute.opened",
        reason=dispute.reason, note=item.note,
    )  # fmt: skip
    ch.disputes_opened.append(
        {"id": dispute.id, "record_id": record.id, "opened_by": who.org_id,
         "reason": dispute.reason, "note": item.note or "", "state": "open", "votes": "{}"}
    )  # fmt: skip
    ch.results[0] = {**(ch.results[0] or {}), "dispute": dispute.id}


def _resolve(
    ch: Changes, who: Principal, prepared: Prepared, states: dict[str, RecordState],
    open_disputes: dict[str, Dispute], policy: PolicyInForce,
) -> None:  # fmt: skip
    extra = prepared.extra
    dispute = open_disputes.get(extra["dispute"])
    if dispute is None or dispute.record not in states:
        raise HashfedError(Problem.NOT_FOUND, f"no dispute {extra['dispute']}")
    record = states[dispute.record]
    decided = machine.resolve_dispute(
        record, dispute, who.org_id, who.roles, extra["outcome"], extra["labels"], policy.rules
    )
    item = Item(0, record.id)
    ch.results.append(None)
    parties = [*record.contributions, dispute.opened_by]
    # Every vote is a logged statement, even one short of quorum that changes no record.
    ch.log_anyway = True
    ch.disputes_voted.append(
        {"id": dispute.id, "state": dispute.state,
         "votes": orjson.dumps(dict(dispute.tally.votes)).decode()}
    )  # fmt: skip
    if decided:
        ch.accept(item, record)
        ch.notify(parties, record.id, dispute.id, "dispute.resolved", outcome=dispute.state,
                  labels=record.labels, note=extra["note"])  # fmt: skip
    else:
        ch.results[0] = {"index": 0, "status": ACCEPTED, "record": record.id}
        ch.notify(parties, record.id, dispute.id, "dispute.vote",
                  outcome=extra["outcome"].value, votes=len(dispute.tally.votes),
                  quorum=policy.rules.dispute_quorum, note=extra["note"])  # fmt: skip
    ch.results[0] = {**(ch.results[0] or {}), "dispute": dispute.id, "dispute_state": dispute.state}


_HANDLERS: dict[StatementType, _Handler] = {
    StatementType.SUBMISSIONS: _submit,
    StatementType.WITHDRAWALS: _withdraw,
    StatementType.REVIEWS: _review,
    StatementType.OPINIONS: _opinion,
    StatementType.DISPUTE_OPEN: _dispute,
}
