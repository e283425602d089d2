"""The ingest path's shortcuts give exactly what the general code gives.

- New records' version leaves come from a template; they must be the
  canonical JSON of ``RecordState.version_fields`` byte for byte.
- Big statements are checked in a helper process; the result, refusals
  included, must equal the in-process check, and a dead helper must not lose
  a statement.
- Bulk inserts go in multi-row statements of a fixed size plus a remainder.
"""

from __future__ import annotations

import asyncio
import os
import pickle
import signal
import sqlite3
import subprocess
import sys
import time
from operator import itemgetter
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Column, Integer, LargeBinary, MetaData, String, Table, func, select
from sqlalchemy.ext.asyncio import create_async_engine

from federation.governance.policy import DEFAULT_POLICY, PolicyDocument, policy_from_document
from federation.identities.service import Principal
from federation.log.append import LogBatch
from federation.protocol.keys import generate_private_key, key_id
from federation.protocol.problems import HashfedError, Problem
from federation.protocol.statements import SignedStatement, canonical_json, sign_statement
from federation.records import checking
from federation.records.checking import CHECKED_KEPT, ItemChecker
from federation.records.ingest import (
    PREPARE_STEP_ITEMS,
    Changes,
    _dumps,
    _gov_json,
    _json_list,
    apply_items,
    draft_as_new,
    prepare,
    prepare_async,
)
from federation.store.bulk import SQLITE_ROWS_PER_INSERT, Inserts, _parts, insert_rows

KEY = generate_private_key()
KID = key_id(KEY.public_key())
LABELS = sorted(DEFAULT_POLICY.taxonomy.labels)
NOW = 1_767_000_000


def statement(items: list[dict[str, Any]], org: str = "acme", stype: str = "submissions") -> Any:
    return sign_statement({"type": stype, "items": items}, KEY, key_id=KID, org=org)


def md5(n: int) -> str:
    return f"{n:032x}"


url_paths = st.text(
    alphabet=st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")), max_size=40
)
submission_items = st.lists(
    st.one_of(
        st.builds(
            lambda n, labels: {"signal_type": "md5", "value": md5(n), "labels": labels},
            st.integers(0, 50),
            st.lists(st.sampled_from(LABELS), min_size=1, max_size=4),
        ),
        st.builds(
            lambda path, labels, note: {
                "signal_type": "url",
                "value": "https://example.org/" + path,
                "labels": labels,
                **({"note": note} if note else {}),
            },
            url_paths,
            st.lists(st.sampled_from(LABELS), min_size=1, max_size=2),
            st.one_of(st.none(), st.text(max_size=20)),
        ),
    ),
    min_size=1,
    max_size=30,
)


def general_encoding(changes: Changes) -> tuple[list[bytes], list[tuple[Any, ...]]]:
    """What the general path writes for the new records, index after the statement leaf."""
    leaves, rows = [], []
    cause = changes.statement.id
    for offset, r in enumerate(changes.new, start=1):
        fields = r.version_fields(cause, changes.now) | {"kind": "version", "index": offset}
        leaves.append(canonical_json(fields))
        rows.append(
            (r.id, r.signal_type, r.value, r.state.value, _json_list(r.labels),
             _json_list(r.contributors), r.version, r.published, offset, changes.now,
             changes.now, _gov_json(r))
        )  # fmt: skip
    return leaves, rows


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(items=submission_items, auto_approve=st.booleans(), org=st.sampled_from(["acme", "b-2"]))
def test_new_record_leaves_are_the_canonical_json_of_their_fields(
    items: list[dict[str, Any]], auto_approve: bool, org: str
) -> None:
    policy = policy_from_document(1, PolicyDocument(auto_approve=auto_approve))
    signed = statement(items, org)
    who = Principal(org, KID, frozenset({"contributor"}))
    changes = apply_items(signed, who, prepare(signed, policy.taxonomy), {}, {}, policy, NOW)
    batch = LogBatch(start=0)
    leaf, rows, _ = changes.number(batch)
    changes.add_leaves(batch)
    leaves, expected_rows = general_encoding(changes)
    assert leaf == 0
    assert [row[2] for row in batch.rows[1:]] == leaves
    assert list(map(tuple, rows)) == sorted(expected_rows, key=itemgetter(0))  # key order
    assert [row[3] for row in batch.rows[1:]] == [r.visible for r in changes.new]


def test_a_record_outside_the_template_takes_the_general_path() -> None:
    signed = statement([{"signal_type": "md5", "value": md5(1), "labels": ["recruitment"]}])
    who = Principal("acme", KID, frozenset({"contributor"}))
    changes = apply_items(signed, who, prepare(signed, DEFAULT_POLICY.taxonomy), {}, {},
                          DEFAULT_POLICY, NOW)  # fmt: skip
    changes.new[0].opinions["other"] = "false_positive"  # not a fresh record any more
    batch = LogBatch(start=0)
    _, rows, _ = changes.number(batch)
    changes.add_leaves(batch)
    leaves, expected_rows = general_encoding(changes)
    assert batch.rows[1][2] == leaves[0] and list(map(tuple, rows)) == expected_rows
    assert b'"opinions":{"false_positive":1}' in leaves[0]


def test_dumps_is_canonical_for_strings_that_need_escaping() -> None:
    for text in ['a"b', "back\\slash", "tab\tnew\nline", "\u2028", "é", "\x7f"]:
        assert _dumps(text).encode() == canonical_json(text)


# ------------------------------------------------------------ the helper process


def mixed_items(n: int) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = [
        {"signal_type": "md5", "value": md5(i).upper(), "labels": ["glorification", "incident"]}
        for i in range(n)
    ]
    items[3] = {"signal_type": "md5", "value": "xyz", "labels": ["incident"]}  # bad value
    items[5] = {"signal_type": "nope", "value": md5(5), "labels": ["incident"]}  # bad type
    items[7] = {"signal_type": "md5", "value": md5(7), "labels": ["no_such_label"]}
    items[9] = {"signal_type": "md5", "value": md5(1), "labels": ["incident"]}  # repeats item 1
    items[11] = {"signal_type": "md5", "value": md5(11), "labels": ["incident"], "extra": 1}
    items[13] = {"signal_type": "md5", "value": md5(13), "labels": ["incident"], "ref": "r" * 9}
    return items


@pytest.fixture
def checker() -> Any:
    c = ItemChecker(processes=1, min_items=10)
    yield c
    c.close()


async def test_a_helper_process_checks_a_statement_as_the_server_itself_would(
    checker: ItemChecker,
) -> None:
    signed = statement(mixed_items(1_500))
    expected = prepare(signed, DEFAULT_POLICY.taxonomy)
    got = await checker.prepare(signed, DEFAULT_POLICY.taxonomy)
    assert checker._pool is not None  # it did go to the helper
    assert got == expected
    refused = {r["index"]: r["problem"]["type"] for r in got.results if r is not None}
    assert sorted(refused) == [3, 5, 7, 9, 11]
    assert refused[9] == Problem.DUPLICATE_ITEM.uri and refused[7] == Problem.UNKNOWN_LABEL.uri
    assert len(got.items) == 1_500 - 5


async def test_a_statement_refused_whole_in_the_helper_is_refused_with_its_problem(
    checker: ItemChecker,
) -> None:
    items = [{"signal_type": "md5", "value": md5(i)} for i in range(20)]
    signed = sign_statement(
        {"type": "withdrawals", "items": items, "reason": "r" * 5_000}, KEY, key_id=KID, org="a"
    )
    with pytest.raises(HashfedError) as in_process:
        prepare(signed, DEFAULT_POLICY.taxonomy)
    with pytest.raises(HashfedError) as in_helper:
        await checker.prepare(signed, DEFAULT_POLICY.taxonomy)
    assert in_helper.value.problem is in_process.value.problem is Problem.STATEMENT_MALFORMED
    assert in_helper.value.detail == in_process.value.detail


async def test_a_dead_helper_loses_no_statement(checker: ItemChecker) -> None:
    signed = statement(mixed_items(200))
    first = await checker.prepare(signed, DEFAULT_POLICY.taxonomy)
    assert checker._pool is not None
    for pid in list(checker._pool._processes):  # the helper dies (e.g. the OOM killer)
        os.kill(pid, signal.SIGKILL)
    again = await checker.prepare(signed, DEFAULT_POLICY.taxonomy)
    assert again == first  # checked in-process instead
    third = await checker.prepare(signed, DEFAULT_POLICY.taxonomy)  # and a new helper after
    assert third == first and checker._pool is not None


def test_a_helper_leaves_when_its_server_is_killed(tmp_path: Any) -> None:
    script = (
        "import asyncio, sys\n"
        "from tests.unit.test_ingest_paths import mixed_items, statement\n"
        "from federation.governance.policy import DEFAULT_POLICY\n"
        "from federation.records.checking import ItemChecker\n"
        "checker = ItemChecker(processes=1, min_items=10)\n"
        "asyncio.run(checker.prepare(statement(mixed_items(50)), DEFAULT_POLICY.taxonomy))\n"
        "assert checker._pool is not None\n"
        "print(*checker._pool._processes, flush=True)\n"
        "import time; time.sleep(60)\n"
    )
    server = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE)
    assert server.stdout is not None
    helpers = [int(pid) for pid in server.stdout.readline().split()]
    assert helpers and all(_alive(pid) for pid in helpers)
    server.kill()  # no chance to stop its helper
    server.wait()
    deadline = time.monotonic() + 10
    while any(_alive(pid) for pid in helpers) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(_alive(pid) for pid in helpers), "the helper outlived its server"


def _alive(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "\nState:\tZ" not in status  # a zombie has left; only its entry waits for a reaper


WHO = Principal("acme", KID, frozenset({"contributor", "consumer"}))


async def test_a_helper_drafts_new_records_as_the_server_itself_would(
    checker: ItemChecker,
) -> None:
    signed = statement(mixed_items(1_500))
    prepared = prepare(signed, DEFAULT_POLICY.taxonomy)
    ids = await checker.new_ids(signed, DEFAULT_POLICY.taxonomy)
    assert ids == [item.record_id for item in prepared.items]
    drafted = await checker.draft_new(signed, WHO, DEFAULT_POLICY)
    assert drafted is not None
    assert drafted == draft_as_new(signed, WHO, prepared, DEFAULT_POLICY, drafted.now)
    # As the statement applied here to no records: the same results, rows and leaves.
    here = apply_items(signed, WHO, prepared, {}, {}, DEFAULT_POLICY, drafted.now)
    assert drafted.results == here.results and len(drafted.encoded.rows) == 1_500 - 5
    sent = drafted.adopt(signed, 10, ids, DEFAULT_POLICY).changes
    assert sent.any and sent.statement is signed
    got, want = LogBatch(start=10), LogBatch(start=10)
    for changes, batch in ((sent, got), (here, want)):
        changes.number(batch)
        changes.add_leaves(batch)
    assert got.rows == want.rows
    # The helper kept the checked items, unchanged by the draft, for the next question.
    assert await checker.prepare(signed, DEFAULT_POLICY.taxonomy) == prepare(
        signed, DEFAULT_POLICY.taxonomy
    )


async def test_a_statement_refused_whole_by_a_helper_draft_is_refused_with_its_problem(
    checker: ItemChecker,
) -> None:
    items = [{"signal_type": "md5", "value": md5(i), "labels": ["incident"]} for i in range(20)]
    signed = sign_statement(
        {"type": "submissions", "items": items, "surprise": 1}, KEY, key_id=KID, org="acme"
    )
    for ask in (
        checker.new_ids(signed, DEFAULT_POLICY.taxonomy),
        checker.draft_new(signed, WHO, DEFAULT_POLICY),
    ):
        with pytest.raises(HashfedError) as in_helper:
            await ask
        assert in_helper.value.problem is Problem.STATEMENT_MALFORMED
        assert "surprise" in in_helper.value.detail


async def test_only_big_submissions_are_drafted_in_a_helper(checker: ItemChecker) -> None:
    taxonomy = DEFAULT_POLICY.taxonomy
    withdrawals = statement([{"signal_type": "md5", "value": md5(i)} for i in range(20)],
                            stype="withdrawals")  # fmt: skip
    assert await checker.new_ids(withdrawals, taxonomy) is None
    small = statement([{"signal_type": "md5", "value": md5(i), "labels": ["incident"]}
                       for i in range(9)])  # fmt: skip
    assert await checker.new_ids(small, taxonomy) is None
    assert checker._pool is None  # neither went to the helper
    none = ItemChecker(processes=0)
    assert await none.new_ids(statement(mixed_items(50)), taxonomy) is None
    with pytest.raises(ValueError, match="only submissions"):
        draft_as_new(withdrawals, WHO, prepare(withdrawals, taxonomy), DEFAULT_POLICY, NOW)


async def test_a_dead_helper_leaves_the_draft_to_the_server(checker: ItemChecker) -> None:
    signed = statement(mixed_items(200))
    assert await checker.new_ids(signed, DEFAULT_POLICY.taxonomy) is not None
    assert checker._pool is not None
    for pid in list(checker._pool._processes):
        os.kill(pid, signal.SIGKILL)
    assert await checker.draft_new(signed, WHO, DEFAULT_POLICY) is None  # then prepare() it
    assert await checker.new_ids(signed, DEFAULT_POLICY.taxonomy) is not None  # a new helper
    assert await checker.draft_new(signed, WHO, DEFAULT_POLICY) is not None


async def test_a_late_report_of_a_dead_helper_leaves_its_successor_alone(
    checker: ItemChecker,
) -> None:
    signed = statement(mixed_items(30))
    assert await checker.new_ids(signed, DEFAULT_POLICY.taxonomy) is not None
    dead = checker._pool
    assert dead is not None
    for pid in list(dead._processes):
        os.kill(pid, signal.SIGKILL)
    assert await checker.new_ids(signed, DEFAULT_POLICY.taxonomy) is None
    assert await checker.new_ids(signed, DEFAULT_POLICY.taxonomy) is not None
    successor = checker._pool
    assert successor is not None and successor is not dead
    checker._discard(dead)  # another request that failed on the dead pool, reporting late
    assert checker._pool is successor
    assert await checker.draft_new(signed, WHO, DEFAULT_POLICY) is not None


async def test_a_helper_keeps_a_checked_statement_until_the_next_question(
    checker: ItemChecker,
) -> None:
    signed = [statement(mixed_items(20 + n)) for n in range(CHECKED_KEPT + 1)]
    for one in signed:
        await checker.new_ids(one, DEFAULT_POLICY.taxonomy)
    assert checker._pool is not None
    pool = checker._pool
    (pid,) = pool._processes

    async def in_helper(task: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(pool, task)

    assert await in_helper(_kept_in_helper) == [one.id for one in signed[1:]]  # oldest out
    await in_helper(_count_checks_in_helper)
    # The next question about a kept statement is answered without checking it again...
    assert await checker.draft_new(signed[-1], WHO, DEFAULT_POLICY) is not None
    expected = prepare(signed[-2], DEFAULT_POLICY.taxonomy)
    assert await checker.prepare(signed[-2], DEFAULT_POLICY.taxonomy) == expected
    assert await in_helper(_checks_in_helper) == 0
    # ... and takes it out; one no longer kept is checked again, and not kept.
    assert await checker.prepare(signed[0], DEFAULT_POLICY.taxonomy) == prepare(
        signed[0], DEFAULT_POLICY.taxonomy
    )
    assert await in_helper(_checks_in_helper) == 1
    assert await in_helper(_kept_in_helper) == [signed[1].id, signed[2].id]
    assert list(pool._processes) == [pid]  # all in the one helper


_checks: list[str] = []  # in the helper: statements checked since _count_checks_in_helper


def _kept_in_helper() -> list[str]:
    """In the helper: the ids of the statements it keeps checked, oldest first."""
    return [statement_id for statement_id, _ in checking._checked]


def _count_checks_in_helper() -> None:
    """In the helper: count the statements checked from now on (see _checks_in_helper)."""
    original = checking.prepare

    def counted(statement: SignedStatement, taxonomy: Any) -> Any:
        _checks.append(statement.id)
        return original(statement, taxonomy)

    checking.prepare = counted  # type: ignore[assignment]


def _checks_in_helper() -> int:
    return len(_checks)


def test_a_policy_goes_to_a_helper_and_back_unchanged() -> None:
    document = PolicyDocument.model_validate(
        {**DEFAULT_POLICY.document.model_dump(), "taxonomy": {"alpha": "A", "beta_2": "B"}}
    )
    policy = policy_from_document(7, document)
    again = pickle.loads(pickle.dumps(policy))
    assert again == policy and dict(again.taxonomy.labels) == {"alpha": "A", "beta_2": "B"}
    with pytest.raises(TypeError):  # still read-only after the trip
        again.taxonomy.labels["gamma"] = "C"


async def test_small_statements_and_no_helpers_stay_in_process() -> None:
    none = ItemChecker(processes=0)
    signed = statement(mixed_items(3 * PREPARE_STEP_ITEMS + 7))
    assert await none.prepare(signed, DEFAULT_POLICY.taxonomy) == prepare(
        signed, DEFAULT_POLICY.taxonomy
    )
    assert none._pool is None
    few = ItemChecker(processes=1, min_items=10_000)
    assert await few.prepare(signed, DEFAULT_POLICY.taxonomy) == prepare(
        signed, DEFAULT_POLICY.taxonomy
    )
    assert few._pool is None


async def test_stepwise_checking_gives_the_same_result() -> None:
    signed: SignedStatement = statement(mixed_items(2 * PREPARE_STEP_ITEMS + 1))
    assert await prepare_async(signed, DEFAULT_POLICY.taxonomy) == prepare(
        signed, DEFAULT_POLICY.taxonomy
    )


# ------------------------------------------------------------ multi-row inserts


@pytest.mark.parametrize(
    "count",
    [0, 1, SQLITE_ROWS_PER_INSERT - 1, SQLITE_ROWS_PER_INSERT, 2 * SQLITE_ROWS_PER_INSERT + 345],
)
async def test_bulk_inserts_write_every_row_once_in_any_count(
    database_url: str, count: int
) -> None:
    table = Table(
        "bulk_probe",
        MetaData(),
        Column("id", Integer, primary_key=True, autoincrement=False),
        Column("name", String(40), nullable=False),
        Column("blob", LargeBinary, nullable=False),
    )
    rows = [(i, f"name-{i}", bytes([i % 256]) * (i % 7)) for i in range(count)]
    engine = create_async_engine(database_url)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(table.metadata.create_all)  # a probe table, not the schema
            await conn.execute(select(1))
            await insert_rows(conn, table, ("id", "name", "blob"), rows)
        async with engine.connect() as conn:
            stored = [tuple(r) for r in await conn.execute(select(table).order_by(table.c.id))]
        assert stored == rows
    finally:
        await engine.dispose()


def test_any_row_count_needs_at_most_eleven_distinct_statements() -> None:
    sizes = set()
    for count in range(5 * SQLITE_ROWS_PER_INSERT):
        parts = _parts(count)
        assert sum(parts) == count
        sizes.update(parts)
    assert len(sizes) <= 11 and max(sizes) == SQLITE_ROWS_PER_INSERT


def _probe_table() -> Table:
    return Table(
        "queued_probe",
        MetaData(),
        Column("id", Integer, primary_key=True, autoincrement=False),
        Column("name", String(40), nullable=False),
    )


async def test_queued_inserts_run_in_order_before_what_follows(database_url: str) -> None:
    """What runs after add() on the connection, through SQLAlchemy, sees the queued rows."""
    table = _probe_table()
    engine = create_async_engine(database_url)
    try:
        async with engine.begin() as conn, Inserts(conn) as inserts:
            await conn.run_sync(table.metadata.create_all)  # a probe table, not the schema
            await inserts.add(table, ("id", "name"), [(i, f"a{i}") for i in range(2_345)])
            counted = (await conn.execute(select(func.count()).select_from(table))).scalar_one()
            await inserts.add(table, ("id", "name"), [(i, f"b{i}") for i in range(2_345, 3_000)])
            await conn.execute(table.update().where(table.c.id == 2_999).values(name="last"))
        async with engine.connect() as conn:
            rows = [tuple(r) for r in await conn.execute(select(table).order_by(table.c.id))]
        assert counted == 2_345
        assert len(rows) == 3_000 and rows[0] == (0, "a0") and rows[-1] == (2_999, "last")
    finally:
        await engine.dispose()


async def test_a_failed_queued_insert_fails_the_transaction_and_writes_nothing(
    database_url: str,
) -> None:
    table = _probe_table()
    engine = create_async_engine(database_url)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(table.metadata.create_all)
        # The driver's own error: the rows go to the driver, not through SQLAlchemy.
        with pytest.raises((sqlite3.IntegrityError, asyncpg.UniqueViolationError)):
            async with engine.begin() as conn, Inserts(conn) as inserts:
                await conn.execute(select(1))
                await inserts.add(table, ("id", "name"), [(i, "x") for i in range(1_500)])
                await inserts.add(table, ("id", "name"), [(1_499, "again")])  # a repeated key
                await inserts.add(table, ("id", "name"), [(i, "y") for i in range(1_500, 2_000)])
        async with engine.connect() as conn:
            assert (await conn.execute(select(func.count()).select_from(table))).scalar_one() == 0
    finally:
        await engine.dispose()


def test_changes_are_numbered_once() -> None:
    signed = statement([{"signal_type": "md5", "value": md5(5), "labels": ["recruitment"]}])
    who = Principal("acme", KID, frozenset({"contributor"}))
    changes = apply_items(signed, who, prepare(signed, DEFAULT_POLICY.taxonomy), {}, {},
                          DEFAULT_POLICY, NOW)  # fmt: skip
    changes.number(LogBatch(start=0))
    with pytest.raises(RuntimeError, match="already numbered"):
        changes.number(LogBatch(start=0))


def test_leaves_go_where_they_were_numbered() -> None:
    """Changes.write numbers the rows, starts their inserts, then builds the leaves."""
    signed = statement([{"signal_type": "md5", "value": md5(6), "labels": ["recruitment"]}])
    who = Principal("acme", KID, frozenset({"contributor"}))
    changes = apply_items(signed, who, prepare(signed, DEFAULT_POLICY.taxonomy), {}, {},
                          DEFAULT_POLICY, NOW)  # fmt: skip
    batch = LogBatch(start=7)
    with pytest.raises(RuntimeError, match="number"):
        changes.add_leaves(batch)  # not numbered yet
    leaf, rows, contributions = changes.number(batch)
    assert (leaf, rows[0][8], contributions[0][7]) == (7, 8, 7)
    assert batch.rows == []  # numbering adds nothing to the log
    batch.add_statement(signed)  # something else took index 7 meanwhile
    with pytest.raises(RuntimeError, match="cannot go at 8"):
        changes.add_leaves(batch)
    fresh = LogBatch(start=7)
    changes.add_leaves(fresh)
    assert [row[0] for row in fresh.rows] == [7, 8]
    assert orjson.loads(fresh.rows[1][2])["index"] == 8
