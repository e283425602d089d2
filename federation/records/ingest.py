"""Submissions and withdrawals: from a signed statement to records, contributions and versions.

Items are validated before the append lock is taken (pure work); inside it,
one read per table fetches what the batch touches, the changes are computed in
memory, and everything is written with Core bulk statements. An item that is
refused or a duplicate writes nothing; a statement that changes nothing is
not logged at all.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from sqlalchemy import and_, bindparam, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from federation.log.append import LogBatch
from federation.protocol.problems import HashfedError, Problem
from federation.protocol.signals import normalize_signal, record_id
from federation.protocol.statements import SignedStatement
from federation.protocol.taxonomy import Taxonomy
from federation.store.bulk import insert_rows
from federation.store.db import chunks
from federation.store.schema import contributions, records

MAX_ITEMS_PER_STATEMENT = 100_000
MAX_NOTE_CHARS = 2000
MAX_REF_CHARS = 256

STATE_PENDING = "pending"
STATE_APPROVED = "approved"
STATE_WITHDRAWN = "withdrawn"
TOMBSTONE_STATES = frozenset({STATE_WITHDRAWN})
CONTRIBUTION_ACTIVE = "active"
CONTRIBUTION_WITHDRAWN = "withdrawn"

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

ACCEPTED = "accepted"
DUPLICATE = "duplicate"
REFUSED = "refused"

_SUBMISSION_KEYS = frozenset({"signal_type", "value", "labels", "note", "ref"})
_WITHDRAWAL_KEYS = frozenset({"signal_type", "value"})
_STATEMENT_KEYS = {
    "submissions": frozenset({"type", "org", "key", "created", "v", "nonce", "items"}),
    "withdrawals": frozenset({"type", "org", "key", "created", "v", "nonce", "items", "reason"}),
}


@dataclass(frozen=True, slots=True)
class Item:
    """A validated item of a submissions or withdrawals statement."""

    position: int
    record_id: str
    signal_type: str
    value: str
    labels: tuple[str, ...] = ()
    note: str | None = None
    ref: str | None = None


@dataclass(slots=True)
class Prepared:
    """Validated items plus the results already decided (refusals)."""

    items: list[Item]
    results: list[dict[str, Any] | None]


def _refusal(position: int, err: HashfedError) -> dict[str, Any]:
    return {
        "index": position,
        "status": REFUSED,
        "problem": {"type": err.problem.uri, "title": err.problem.title, "detail": err.detail},
    }


def _items_of(statement: SignedStatement) -> list[Any]:
    allowed = _STATEMENT_KEYS[statement.type]
    unknown = set(statement.payload) - allowed
    if unknown:
        raise HashfedError(
            Problem.STATEMENT_MALFORMED,
            f"unknown member(s) in {statement.type}: {', '.join(sorted(unknown))}",
        )
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


def _optional_text(raw: dict[str, Any], key: str, limit: int) -> str | None:
    value = raw.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > limit:
        raise HashfedError(
            Problem.MALFORMED_REQUEST, f"'{key}' must be a string of at most {limit} characters"
        )
    return value


def _signal_of(raw: Any, allowed: frozenset[str]) -> tuple[str, str, str]:
    if not isinstance(raw, dict):
        raise HashfedError(Problem.MALFORMED_REQUEST, "an item must be a JSON object")
    unknown = raw.keys() - allowed
    if unknown:
        raise HashfedError(
            Problem.MALFORMED_REQUEST, f"unknown member(s) in item: {', '.join(sorted(unknown))}"
        )
    signal_type, value = raw.get("signal_type"), raw.get("value")
    if not isinstance(signal_type, str) or not isinstance(value, str):
        raise HashfedError(
            Problem.MALFORMED_REQUEST, "an item needs string members 'signal_type' and 'value'"
        )
    normalized = normalize_signal(signal_type, value)
    return signal_type, normalized, record_id(signal_type, normalized)


def prepare_submissions(statement: SignedStatement, taxonomy: Taxonomy) -> Prepared:
    """Validate every item of a submissions statement (no I/O)."""
    raw_items = _items_of(statement)
    prepared = Prepared(items=[], results=[None] * len(raw_items))
    seen: set[str] = set()
    # Batches repeat a few label sets many times: validate each set once.
    validated: dict[tuple[str, ...], tuple[str, ...]] = {}
    for position, raw in enumerate(raw_items):
        try:
            signal_type, value, rid = _signal_of(raw, _SUBMISSION_KEYS)
            labels = raw.get("labels")
            if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
                raise HashfedError(Problem.MALFORMED_REQUEST, "'labels' must be a list of strings")
            key = tuple(labels)
            checked = validated.get(key)
            if checked is None:
                checked = validated[key] = taxonomy.validate(labels)
            note = _optional_text(raw, "note", MAX_NOTE_CHARS)
            ref = _optional_text(raw, "ref", MAX_REF_CHARS)
            if rid in seen:
                raise HashfedError(
                    Problem.DUPLICATE_ITEM,
                    f"{signal_type} {value} appears earlier in this statement",
                )
        except HashfedError as err:
            prepared.results[position] = _refusal(position, err)
            continue
        seen.add(rid)
        prepared.items.append(Item(position, rid, signal_type, value, checked, note, ref))
    return prepared


def prepare_withdrawals(statement: SignedStatement) -> Prepared:
    """Validate every item of a withdrawals statement (no I/O)."""
    raw_items = _items_of(statement)
    reason = statement.payload.get("reason")
    if reason is not None and (not isinstance(reason, str) or len(reason) > MAX_NOTE_CHARS):
        raise HashfedError(Problem.STATEMENT_MALFORMED, "'reason' must be a short string")
    prepared = Prepared(items=[], results=[None] * len(raw_items))
    seen: set[str] = set()
    for position, raw in enumerate(raw_items):
        try:
            signal_type, value, rid = _signal_of(raw, _WITHDRAWAL_KEYS)
            if rid in seen:
                raise HashfedError(
                    Problem.DUPLICATE_ITEM,
                    f"{signal_type} {value} appears earlier in this statement",
                )
        except HashfedError as err:
            prepared.results[position] = _refusal(position, err)
            continue
        seen.add(rid)
        prepared.items.append(Item(position, rid, signal_type, value))
    return prepared


@functools.lru_cache(maxsize=4096)
def _json_sorted(values: tuple[str, ...]) -> str:
    return orjson.dumps(sorted(values)).decode()


def _json_list(values: Iterable[str]) -> str:
    """Sorted JSON list; label sets repeat across a batch, so the encoding is cached."""
    return _json_sorted(values if isinstance(values, tuple) else tuple(values))


def _version_fields(
    row: dict[str, Any], labels: Sequence[str], contributors: Sequence[str], cause: str, now: int
) -> dict[str, Any]:
    return {
        "record": row["id"],
        "version": row["version"],
        "signal_type": row["signal_type"],
        "value": row["value"],
        "state": row["state"],
        "labels": list(labels),
        "contributors": list(contributors),
        "cause": cause,
        "time": now,
    }


async def _fetch_records(conn: AsyncConnection, ids: Sequence[str]) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for part in chunks(ids):
        for row in await conn.execute(select(records).where(records.c.id.in_(part))):
            found[row.id] = row
    return found


def _summary(statement: SignedStatement, results: list[dict[str, Any] | None]) -> dict[str, Any]:
    done = [r for r in results if r is not None]
    counts = {ACCEPTED: 0, DUPLICATE: 0, REFUSED: 0}
    for r in done:
        counts[r["status"]] += 1
    return {"statement_id": statement.id, "counts": counts, "results": done}


async def apply_submissions(
    conn: AsyncConnection,
    batch: LogBatch,
    statement: SignedStatement,
    prepared: Prepared,
    *,
    initial_state: str,
) -> dict[str, Any]:
    """Apply validated submissions inside an append transaction."""
    org = statement.org
    now = int(time.time())
    ids = [item.record_id for item in prepared.items]
    existing = await _fetch_records(conn, ids)
    mine: dict[str, str] = {}
    touched = [rid for rid in ids if rid in existing]
    for part in chunks(touched):
        rows = await conn.execute(
            select(contributions.c.record_id, contributions.c.status).where(
                and_(contributions.c.org_id == org, contributions.c.record_id.in_(part))
            )
        )
        mine.update({r.record_id: r.status for r in rows})

    new_records: list[dict[str, Any]] = []
    changed_records: list[dict[str, Any]] = []
    new_contribs: list[dict[str, Any]] = []
    revived_contribs: list[dict[str, Any]] = []
    versions: list[tuple[dict[str, Any], list[str], list[str]]] = []
    results = prepared.results
    for item in prepared.items:
        old = existing.get(item.record_id)
        if old is not None and mine.get(item.record_id) == CONTRIBUTION_ACTIVE:
            results[item.position] = {
                "index": item.position,
                "status": DUPLICATE,
                "record": item.record_id,
            }
            continue
        contribution = {
            "record_id": item.record_id,
            "org_id": org,
            "status": CONTRIBUTION_ACTIVE,
            "labels": _json_list(item.labels),
            "statement_id": statement.id,
            "note": item.note,
            "ref": item.ref,
        }
        if old is None:
            labels, contributors = list(item.labels), [org]
            row: dict[str, Any] = {
                "id": item.record_id,
                "signal_type": item.signal_type,
                "value": item.value,
                "state": initial_state,
                "version": 1,
                "published": initial_state == STATE_APPROVED,
                "created_at": now,
            }
            new_records.append(row)
            new_contribs.append(contribution)
        else:
            revived = old.state in TOMBSTONE_STATES
            labels = sorted(
                set(item.labels) if revived else set(orjson.loads(old.labels)) | set(item.labels)
            )
            contributors = [org] if revived else sorted({*orjson.loads(old.contributors), org})
            state = initial_state if revived else old.state
            row = {
                "id": old.id,
                "signal_type": old.signal_type,
                "value": old.value,
                "state": state,
                "version": old.version + 1,
                "published": old.published or state == STATE_APPROVED,
            }
            changed_records.append(row)
            (revived_contribs if item.record_id in mine else new_contribs).append(contribution)
        row["labels"] = _json_list(labels)
        row["contributors"] = _json_list(contributors)
        row["updated_at"] = now
        versions.append((row, labels, contributors))
        results[item.position] = {
            "index": item.position,
            "status": ACCEPTED,
            "record": item.record_id,
        }

    summary = _summary(statement, results)
    if not versions:
        summary["leaf_index"] = None
        return summary
    summary["leaf_index"] = batch.add_statement(statement)
    for row, labels, contributors in versions:
        fields = _version_fields(row, labels, contributors, statement.id, now)
        row["head_idx"] = batch.add_version(fields, visible=row["state"] == STATE_APPROVED)
    for c in (*new_contribs, *revived_contribs):
        c["updated_idx"] = summary["leaf_index"]
    await insert_rows(
        conn, records, RECORD_COLUMNS, [tuple(r[c] for c in RECORD_COLUMNS) for r in new_records]
    )
    if changed_records:
        await _update_records(conn, changed_records)
    await insert_rows(
        conn,
        contributions,
        CONTRIBUTION_COLUMNS,
        [tuple(c[k] for k in CONTRIBUTION_COLUMNS) for c in new_contribs],
    )
    if revived_contribs:
        await _update_contributions(conn, revived_contribs)
    return summary


async def _update_records(conn: AsyncConnection, rows: list[dict[str, Any]]) -> None:
    params = [
        {
            "b_id": r["id"],
            "b_state": r["state"],
            "b_labels": r["labels"],
            "b_contributors": r["contributors"],
            "b_version": r["version"],
            "b_published": r["published"],
            "b_head_idx": r["head_idx"],
            "b_updated_at": r["updated_at"],
        }
        for r in rows
    ]
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
        )
    )
    await conn.execute(stmt, params)


async def _update_contributions(conn: AsyncConnection, rows: list[dict[str, Any]]) -> None:
    stmt = (
        update(contributions)
        .where(
            and_(
                contributions.c.record_id == bindparam("b_record_id"),
                contributions.c.org_id == bindparam("b_org_id"),
            )
        )
        .values(
            status=bindparam("b_status"),
            labels=bindparam("b_labels"),
            statement_id=bindparam("b_statement_id"),
            note=bindparam("b_note"),
            ref=bindparam("b_ref"),
            updated_idx=bindparam("b_updated_idx"),
        )
    )
    await conn.execute(stmt, [{f"b_{k}": v for k, v in r.items()} for r in rows])


async def apply_withdrawals(
    conn: AsyncConnection, batch: LogBatch, statement: SignedStatement, prepared: Prepared
) -> dict[str, Any]:
    """Withdraw the signer's contributions; a record whose last one goes becomes a tombstone."""
    org = statement.org
    now = int(time.time())
    ids = [item.record_id for item in prepared.items]
    existing = await _fetch_records(conn, ids)
    active: dict[str, dict[str, list[str]]] = {}
    for part in chunks([rid for rid in ids if rid in existing]):
        rows = await conn.execute(
            select(contributions.c.record_id, contributions.c.org_id, contributions.c.labels).where(
                and_(
                    contributions.c.record_id.in_(part),
                    contributions.c.status == CONTRIBUTION_ACTIVE,
                )
            )
        )
        for r in rows:
            active.setdefault(r.record_id, {})[r.org_id] = orjson.loads(r.labels)

    changed: list[dict[str, Any]] = []
    withdrawn: list[dict[str, Any]] = []
    results = prepared.results
    for item in prepared.items:
        by_org = active.get(item.record_id, {})
        if org not in by_org:
            err = HashfedError(
                Problem.NOT_CONTRIBUTOR,
                f"{org!r} has no active contribution to {item.signal_type} {item.value}",
            )
            results[item.position] = _refusal(item.position, err)
            continue
        old = existing[item.record_id]
        del by_org[org]
        remaining = sorted(by_org)
        labels = sorted({label for ls in by_org.values() for label in ls})
        row = {
            "id": old.id,
            "signal_type": old.signal_type,
            "value": old.value,
            "state": old.state if remaining else STATE_WITHDRAWN,
            "version": old.version + 1,
            "published": old.published,
            "labels": _json_list(labels),
            "contributors": _json_list(remaining),
            "updated_at": now,
        }
        changed.append(row)
        withdrawn.append({"record_id": old.id, "org_id": org})
        results[item.position] = {"index": item.position, "status": ACCEPTED, "record": old.id}

    summary = _summary(statement, results)
    if not changed:
        summary["leaf_index"] = None
        return summary
    summary["leaf_index"] = batch.add_statement(statement)
    for row in changed:
        # A tombstone reaches consumers only if they were shown the record.
        visible = row["state"] == STATE_APPROVED or (
            row["state"] in TOMBSTONE_STATES and bool(row["published"])
        )
        fields = _version_fields(
            row, orjson.loads(row["labels"]), orjson.loads(row["contributors"]), statement.id, now
        )
        row["head_idx"] = batch.add_version(fields, visible=visible)
    await _update_records(conn, changed)
    stmt = (
        update(contributions)
        .where(
            and_(
                contributions.c.record_id == bindparam("b_record_id"),
                contributions.c.org_id == bindparam("b_org_id"),
            )
        )
        .values(
            status=CONTRIBUTION_WITHDRAWN,
            statement_id=statement.id,
            updated_idx=summary["leaf_index"],
        )
    )
    await conn.execute(
        stmt, [{"b_record_id": w["record_id"], "b_org_id": w["org_id"]} for w in withdrawn]
    )
    return summary
