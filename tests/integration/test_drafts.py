"""Drafted statements: applied before the append lock, kept only if their records did not change.

The intake applies a record statement to its records as they were read
before the append lock (a draft), then, inside the lock, keeps that work only
if no version of those records was appended in between; otherwise it applies
the statement again. These tests put another member's statement exactly in
that gap, on SQLite and PostgreSQL, with items checked in-process and in a
helper process (which drafts a submission as if none of its records existed,
and the intake drafts it as usual if one does).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from types import SimpleNamespace
from typing import Any

import orjson
import pytest
from sqlalchemy import select

import federation.intake as intake_module
import federation.records.ingest as ingest
from clients.client import Identity
from federation.identities.service import Principal
from federation.intake import Intake
from federation.log.checkpoints import CheckpointSigner
from federation.protocol.signals import record_id
from federation.protocol.statements import SignedStatement, StatementType, sign_statement
from federation.records.checking import ItemChecker
from federation.store.schema import LEAF_VERSION, contributions, log, records
from tests.conftest import Federation

SUBMISSIONS = {StatementType.SUBMISSIONS}
WITHDRAWALS = {StatementType.WITHDRAWALS}


def md5(n: int) -> str:
    return f"{n:032x}"


def submissions(who: Identity, *values: str) -> SignedStatement:
    items = [{"signal_type": "md5", "value": v, "labels": ["recruitment"]} for v in values]
    return sign_statement(
        {"type": "submissions", "items": items}, who.private_key, key_id=who.key_id, org=who.org
    )


def principal(who: Identity) -> Principal:
    return Principal(who.org, who.key_id, frozenset({"contributor", "consumer"}))


@pytest.fixture(scope="module")
def helper() -> Iterator[ItemChecker]:
    """Checks every statement, however small, in one helper process (started once)."""
    checker = ItemChecker(processes=1, min_items=1)
    yield checker
    checker.close()


@pytest.fixture(params=["in-process", "helper"])
async def intake(fed: Federation, helper: ItemChecker, request: pytest.FixtureRequest) -> Intake:
    checker = helper if request.param == "helper" else ItemChecker(processes=0)
    signer = CheckpointSigner.from_file(fed.settings.origin, fed.settings.log_key_path)
    return Intake(fed.db, signer, checker)


def uses_helper(intake: Intake) -> bool:
    return intake.checker.processes > 0


class Applied:
    """How statements were applied: drafts kept as new records, and applications here."""

    def __init__(self) -> None:
        self.here: list[str] = []  # statement types applied in this process (drafts or in the lock)
        self.new_drafts: list[bool] = []  # per helper draft: whether it was adopted

    def __len__(self) -> int:
        """Applications, wherever they ran: in this process, and adopted helper drafts."""
        return len(self.here) + len(self.new_drafts)


def between_draft_and_lock(
    monkeypatch: pytest.MonkeyPatch, meanwhile: Callable[[], Awaitable[Any]]
) -> Applied:
    """Run ``meanwhile`` once, right after the next draft is made; count applications."""
    applied = Applied()
    draft, apply_steps = ingest.draft_record_statement, ingest.apply_steps
    as_new = Intake._draft_as_new
    pending = [meanwhile]

    async def drafted(*args: Any, **kwargs: Any) -> Any:
        made = await draft(*args, **kwargs)
        while pending:
            await pending.pop()()
        return made

    async def adopted(intake: Intake, *args: Any, **kwargs: Any) -> Any:
        made = await as_new(intake, *args, **kwargs)
        if uses_helper(intake):
            applied.new_drafts.append(made is not None)
        while pending and made is not None:
            await pending.pop()()
        return made

    def counted(statement: SignedStatement, *args: Any, **kwargs: Any) -> Any:
        applied.here.append(statement.type)
        return apply_steps(statement, *args, **kwargs)

    monkeypatch.setattr(intake_module, "draft_record_statement", drafted)
    monkeypatch.setattr(Intake, "_draft_as_new", adopted)
    monkeypatch.setattr(ingest, "apply_steps", counted)
    return applied


async def contributors(fed: Federation, rid: str) -> list[str]:
    async with fed.db.reading() as conn:
        rows = await conn.execute(
            select(contributions.c.org_id).where(contributions.c.record_id == rid)
        )
        return sorted(r.org_id for r in rows)


async def test_a_draft_whose_record_changed_meanwhile_is_applied_again(
    fed: Federation, intake: Intake, monkeypatch: pytest.MonkeyPatch
) -> None:
    alpha, beta = await fed.admit("alpha"), await fed.admit("beta")
    shared, own = md5(1), md5(2)
    first = submissions(alpha, shared)

    async def alpha_submits_first() -> None:
        await intake.accept(principal(alpha), first.envelope(), SUBMISSIONS)

    applied = between_draft_and_lock(monkeypatch, alpha_submits_first)
    # Beta's draft saw no record for `shared`; alpha created it before beta's lock.
    outcome = await intake.accept(principal(beta), submissions(beta, shared, own).envelope(),
                                  SUBMISSIONS)  # fmt: skip

    assert [r["status"] for r in outcome.result["results"]] == ["accepted", "accepted"]
    assert len(applied) == 3  # alpha's draft, beta's draft, beta applied again in the lock
    if uses_helper(intake):  # both drafted as new records; beta's was not kept
        assert applied.new_drafts == [True, True] and applied.here == ["submissions"]
    assert await contributors(fed, record_id("md5", shared)) == ["alpha", "beta"]
    assert await contributors(fed, record_id("md5", own)) == ["beta"]
    async with fed.db.reading() as conn:
        row = (
            await conn.execute(
                select(records.c.version, records.c.contributors).where(
                    records.c.id == record_id("md5", shared)
                )
            )
        ).one()
        versions = (
            await conn.execute(
                select(log.c.leaf).where(log.c.kind == LEAF_VERSION).order_by(log.c.idx)
            )
        ).scalars()
        leaves = [bytes(v) for v in versions if record_id("md5", shared).encode() in bytes(v)]
    assert (row.version, row.contributors) == (2, '["alpha","beta"]')
    assert len(leaves) == 2
    assert b'"contributors":["alpha"]' in leaves[0] and b'"version":1}' in leaves[0]
    assert b'"contributors":["alpha","beta"]' in leaves[1] and b'"version":2}' in leaves[1]


async def test_a_draft_of_untouched_records_is_kept_though_the_log_grew(
    fed: Federation, intake: Intake, monkeypatch: pytest.MonkeyPatch
) -> None:
    alpha, beta = await fed.admit("alpha"), await fed.admit("beta")

    async def alpha_submits_other_records() -> None:
        await intake.accept(principal(alpha), submissions(alpha, md5(7), md5(8)).envelope(),
                            SUBMISSIONS)  # fmt: skip

    applied = between_draft_and_lock(monkeypatch, alpha_submits_other_records)
    outcome = await intake.accept(principal(beta), submissions(beta, md5(9)).envelope(),
                                  SUBMISSIONS)  # fmt: skip

    assert outcome.result["counts"] == {"accepted": 1, "duplicate": 0, "refused": 0}
    assert len(applied) == 2  # each statement applied once: beta's draft held
    if uses_helper(intake):
        assert applied.new_drafts == [True, True] and applied.here == []
    assert await contributors(fed, record_id("md5", md5(9))) == ["beta"]
    assert outcome.result["leaf_index"] > 0


async def test_a_withdrawal_drafted_before_a_resubmission_sees_the_record_as_it_is(
    fed: Federation, intake: Intake, monkeypatch: pytest.MonkeyPatch
) -> None:
    alpha, beta = await fed.admit("alpha"), await fed.admit("beta")
    value = md5(3)
    await intake.accept(principal(alpha), submissions(alpha, value).envelope(), SUBMISSIONS)
    withdrawal = sign_statement(
        {"type": "withdrawals", "items": [{"signal_type": "md5", "value": value}]},
        alpha.private_key, key_id=alpha.key_id, org=alpha.org,
    )  # fmt: skip

    async def beta_joins() -> None:
        await intake.accept(principal(beta), submissions(beta, value).envelope(), SUBMISSIONS)

    between_draft_and_lock(monkeypatch, beta_joins)
    # Alpha's draft saw it as the only contributor (a tombstone would follow);
    # beta joined first, so the record stays, with beta alone.
    await intake.accept(principal(alpha), withdrawal.envelope(), WITHDRAWALS)
    rid = record_id("md5", value)
    async with fed.db.reading() as conn:
        row = (
            await conn.execute(
                select(records.c.state, records.c.version, records.c.contributors).where(
                    records.c.id == rid
                )
            )
        ).one()
    assert (row.state, row.version, row.contributors) == ("approved", 3, '["beta"]')


async def test_a_kept_draft_takes_the_time_of_its_append(
    fed: Federation, intake: Intake, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Leaf times never go back in log order, though a draft is made before the lock."""
    alpha, beta = await fed.admit("alpha"), await fed.admit("beta")
    clock = iter(range(1_800_000_000, 1_800_100_000, 10))  # each reading 10 s after the last
    monkeypatch.setattr(ingest, "time", SimpleNamespace(time=lambda: next(clock)))

    async def alpha_appends() -> None:
        await intake.accept(principal(alpha), submissions(alpha, md5(20)).envelope(), SUBMISSIONS)

    applied = between_draft_and_lock(monkeypatch, alpha_appends)
    await intake.accept(principal(beta), submissions(beta, md5(21)).envelope(), SUBMISSIONS)

    assert len(applied) == 2  # beta's draft was kept
    assert applied.here == ([] if uses_helper(intake) else ["submissions", "submissions"])
    async with fed.db.reading() as conn:
        query = select(log.c.leaf).where(log.c.kind == LEAF_VERSION).order_by(log.c.idx)
        times = [orjson.loads(leaf)["time"] for leaf in (await conn.execute(query)).scalars()]
        rows = await conn.execute(select(records.c.id, records.c.created_at))
        created = {row.id: row.created_at for row in rows}
    assert len(times) == 2 and times[0] < times[1]
    assert created[record_id("md5", md5(21))] == times[1]


async def test_a_draft_made_under_an_older_policy_is_applied_again(
    fed: Federation, intake: Intake, monkeypatch: pytest.MonkeyPatch
) -> None:
    beta = await fed.admit("beta")

    async def review_turned_on() -> None:
        async with fed.client(fed.governance) as governance:
            await governance.update_policy(auto_approve=False)

    applied = between_draft_and_lock(monkeypatch, review_turned_on)
    # Beta's draft approved the record at once (auto-approve); the policy in
    # force when it is appended holds it for review.
    await intake.accept(principal(beta), submissions(beta, md5(30)).envelope(), SUBMISSIONS)

    assert len(applied) == 2  # the draft, then the statement applied again under the new policy
    assert applied.new_drafts == ([True] if uses_helper(intake) else [])
    async with fed.db.reading() as conn:
        state = await conn.scalar(
            select(records.c.state).where(records.c.id == record_id("md5", md5(30)))
        )
    assert state == "pending"


async def test_a_statement_naming_a_held_record_is_drafted_as_usual(
    fed: Federation, intake: Intake, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A helper drafts as new records only; one record already held, and the draft is the usual."""
    alpha, beta = await fed.admit("alpha"), await fed.admit("beta")
    await intake.accept(principal(alpha), submissions(alpha, md5(40)).envelope(), SUBMISSIONS)

    async def nothing() -> None:
        pass

    applied = between_draft_and_lock(monkeypatch, nothing)
    statement = submissions(beta, md5(41), md5(40), md5(42))
    outcome = await intake.accept(principal(beta), statement.envelope(), SUBMISSIONS)

    assert [r["status"] for r in outcome.result["results"]] == ["accepted"] * 3
    # Drafted once here (with the held record as it is), kept in the lock.
    assert applied.here == ["submissions"]
    assert applied.new_drafts == ([False] if uses_helper(intake) else [])
    assert await contributors(fed, record_id("md5", md5(40))) == ["alpha", "beta"]
    assert await contributors(fed, record_id("md5", md5(41))) == ["beta"]
    again = await intake.accept(principal(beta), statement.envelope(), SUBMISSIONS)
    assert again.replayed and again.result == outcome.result
