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
from operator import itemgetter
from typing import Any, NamedTuple, cast

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
from federation.protocol.statements import SignedStatement, StatementType
from federation.protocol.taxonomy import Taxonomy
from federation.store.bulk import insert_rows
from federation.store.db import chunks, one_of
from federation.store.schema import contributions, disputes, notifications, records

CONTRIBUTION_ACTIVE = "active"
CONTRIBUTION_WITHDRAWN = "withdrawn"

UPSERT_CHUNK_ROWS = 2_000
# Items checked between two hand-backs to the event loop (about 3 ms of work).
PREPARE_STEP_ITEMS = 500

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


def _each(
    statement: SignedStatement, parse: Callable[[int, Any], Item]
) -> Generator[None, None, Prepared]:
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
    steps = _prepare_steps(statement, taxonomy)
    while (prepared := _advance(steps)) is None:
        pass
    return prepared


async def prepare_async(statement: SignedStatement, taxonomy: Taxonomy) -> Prepared:
    """:func:`prepare`, handing the event loop back every few hundred items.

    Checking a 20,000-item statement takes over 100 ms of Python. In one go,
    it would hold up the append in progress, which needs the loop at each of
    its database round trips; in steps, that append gets the loop back soon.
    """
    steps = _prepare_steps(statement, taxonomy)
    while True:
        prepared = _advance(steps)
        if prepared is not None:
            return prepared
        await asyncio.sleep(0)  # a pause between steps, not a wait for something


def _advance(steps: Generator[None, None, Prepared]) -> Prepared | None:
    """Run ``steps`` to its next pause; its result once it has finished."""
    try:
        next(steps)
    except StopIteration as done:
        return cast(Prepared, done.value)
    return None


def _prepare_steps(
    statement: SignedStatement, taxonomy: Taxonomy
) -> Generator[None, None, Prepared]:
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
        return bool(self.new or self.changed or self.log_anyway)

    async def write(self, conn: AsyncConnection, batch: LogBatch) -> int | None:
        """Append the statement and its versions; write records, contributions, inboxes."""
        if not self.any:
            return None
        leaf = batch.add_statement(self.statement)
        cause, now = self.statement.id, self.now
        new_rows = self._append_new(batch)
        for record in self.changed:
            self.head_idx[record.id] = batch.add_version(
                record.version_fields(cause, now), visible=record.visible
            )
        # New rows go in key order: a batch of random ids then walks the
        # B-tree once, left to right, instead of jumping around it.
        new_rows.sort(key=_first)
        await insert_rows(conn, records, RECORD_COLUMNS, new_rows)
        if self.changed:
            await _update_records(conn, self.changed, self.head_idx, now)
        await insert_rows(
            conn, contributions, CONTRIBUTION_COLUMNS,
            sorted(((*c, leaf) for c in self.contributions_added), key=_first),
        )  # fmt: skip
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

    def _append_new(self, batch: LogBatch) -> list[tuple[Any, ...]]:
        """Append the version leaves of the records this statement created; their rows.

        A record created here has version 1, one contributor and no governance
        history yet, so its leaf, the canonical JSON of
        :meth:`RecordState.version_fields`, is filled into a template instead of
        built as a dict and sorted: the same bytes (a property test compares the
        two, and the auditor rebuilds every leaf the slow way), at a third of the
        cost. A record that does not fit the template takes the general path.
        """
        cause, now = self.statement.id, self.now
        rows: list[tuple[Any, ...]] = []
        heads: dict[str, tuple[str, str]] = {}
        labels_json: dict[tuple[str, ...], str] = {}
        head_idx = self.head_idx
        for r in self.new:
            if (
                r.version != 1 or len(r.contributions) != 1 or r.approvals or r.opinions
                or r.open_disputes or r.relabelled is not None
            ):  # fmt: skip
                head_idx[r.id] = idx = batch.add_version(
                    r.version_fields(cause, now), visible=r.visible
                )
                rows.append(
                    (r.id, r.signal_type, r.value, r.state.value, _json_list(r.labels),
                     _json_list(r.contributors), r.version, r.published, idx, now, now,
                     _gov_json(r))
                )  # fmt: skip
                continue
            ((org, labels),) = r.contributions.items()
            head = heads.get(org)
            if head is None:
                contributors = _dumps([org])
                head = heads[org] = (
                    f'{{"cause":{_dumps(cause)},"contributors":{contributors},'
                    '"disputed":false,"index":',
                    contributors,
                )
            lj = labels_json.get(labels)
            if lj is None:
                lj = labels_json[labels] = _json_sorted(tuple(set(labels)))
            state = r.state.value
            head_idx[r.id] = idx = batch.next_idx
            batch.add_version_leaf(
                idx,
                f'{head[0]}{idx},"kind":"version","labels":{lj},"opinions":{{}},'
                f'"record":{_dumps(r.id)},"signal_type":{_dumps(r.signal_type)},'
                f'"state":"{state}","time":{now},"value":{_dumps(r.value)},"version":1}}'.encode(),
                visible=r.visible,
            )
            rows.append(
                (r.id, r.signal_type, r.value, state, lj, head[1], 1, r.published, idx, now, now,
                 "{}")
            )  # fmt: skip
        return rows

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
    changes = Changes(statement, now, prepared.results)
    stype = StatementType(statement.type)
    if stype == StatementType.DISPUTE_RESOLVE:
        _resolve(changes, principal, prepared, states, open_disputes, policy)
        return changes
    handler = _HANDLERS[stype]
    for item in prepared.items:
        try:
            handler(changes, principal, item, states, open_disputes, policy)
        except HashfedError as err:
            if stype == StatementType.DISPUTE_OPEN:
                raise  # a single-record statement is refused whole
            changes.refuse(item, err)
    return changes


async def apply_record_statement(
    conn: AsyncConnection,
    batch: LogBatch,
    statement: SignedStatement,
    principal: Principal,
    prepared: Prepared,
    policy: PolicyInForce,
) -> dict[str, Any]:
    """Apply a validated record statement inside the append transaction."""
    found: dict[str, Dispute] = {}
    if statement.type == StatementType.DISPUTE_RESOLVE:
        dispute = await load_dispute(conn, prepared.extra["dispute"])
        ids = [dispute.record]
        found[dispute.id] = dispute
    else:
        ids = [item.record_id for item in prepared.items]
    states = await load_states(conn, ids)
    changes = apply_items(statement, principal, prepared, states, found, policy, int(time.time()))
    leaf = await changes.write(conn, batch)
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
