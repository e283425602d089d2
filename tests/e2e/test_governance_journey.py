"""Governance end to end, through the real ``hashfed`` command line against the real server.

The federation runs with ``hashfed server run`` (SQLite, and PostgreSQL with
two workers); each organisation works from its own ``HASHFED_HOME`` (the
helpers of ``test_member_journey.py``). The journey:

1. governance turns review on (``hashfed policy set --no-auto-approve``)
   and admits A (contributor, consumer, and admin: so that conflicts of
   interest can be tried), B (consumer, contributor), C (consumer only) and
   J (admin only, the uninvolved judge);
2. A pushes; the record is pending: in J's review queue, invisible to B's
   and C's pulls. B may not approve (exit 3, ``forbidden-role``); A, an
   admin but the contributor, may not approve its own record (refused item,
   exit 1, ``conflict-of-interest``);
3. J approves; B and C pull it, approved and not disputed (each consumer's
   store is read directly; C's also through ``hashfed export``);
4. B disputes it; on their next pull B and C hold it flagged ``disputed``
   in the pulled version, C's ``export`` shows ``"disputed": true`` and
   ``export --only-undisputed`` leaves it out;
5. A's admin may not resolve the dispute on its own record (exit 3,
   ``conflict-of-interest``); J retracts it (quorum 1);
6. B and C pull the ``retracted`` tombstone;
7. A's inbox shows each step in order (``review.approve``,
   ``dispute.opened``, ``dispute.resolved``) and then nothing new; B's inbox
   shows the dispute's steps; B's ``dispute list`` shows it retracted with
   J's vote, and C, not a party, sees no dispute;
8. the retracted signal cannot be brought back by pushing it again: another
   member and A itself are both refused with ``invalid-transition``
   (docs/governance.md), and C's next pull brings no new version.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from federation.protocol.signals import normalize_signal, record_id
from tests.e2e.test_member_journey import Member, federation, parallel

pytestmark = pytest.mark.slow

PDQ = "f8f8f0cee0f4a84f06370a22038f63f0b36e2ed596621e1d33e6b39c4e9c9b22"
MD5 = "0cc175b9c0f1b6a831c399e269772661"
DISPUTED = f"pdq:{PDQ}"  # the record B disputes and J retracts
CONTROL = f"md5:{MD5}"  # approved alongside it, never disputed
DISPUTED_ID = record_id("pdq", normalize_signal("pdq", PDQ))
CONTROL_ID = record_id("md5", normalize_signal("md5", MD5))
DISPUTE_NOTE = "a still from a 2019 feature film"
RESOLUTION_NOTE = "confirmed film still"
SUBMISSION = f"signal_type,value,labels\npdq,{PDQ},recruitment\nmd5,{MD5},glorification\n"


def by_record(records: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {r["record"]: r for r in records}


def pulled_leaf(member: Member, record: str) -> dict[str, Any]:
    """The record's version exactly as the member's pull stored it (the log leaf)."""
    conn = sqlite3.connect(f"file:{member.store}?mode=ro", uri=True)
    try:
        row = conn.execute("SELECT leaf FROM records WHERE id = ?", (record,)).fetchone()
    finally:
        conn.close()
    assert row is not None, f"{member.org}'s store does not hold {record}"
    leaf: dict[str, Any] = json.loads(bytes(row[0]))
    return leaf


def assert_nothing_new(member: Member) -> None:
    pulled = member.pull()
    assert pulled["versions"] == 0, pulled


def each(members: tuple[Member, ...], step: Callable[[Member], None]) -> None:
    """The same step for every consumer, side by side."""
    parallel(*(lambda m=m: step(m) for m in members))


async def test_governance_journey(tmp_path: Path, database_url: str) -> None:
    async with federation(tmp_path, database_url) as fed:
        gov = fed.governance

        # 1. Review on; four organisations.
        policy = gov.json("policy", "set", "--no-auto-approve")
        assert (policy["type"], policy["version"]) == ("policy.set", 2), policy
        alpha, beta, carol, jury = fed.admit_all(
            ("alpha", ("admin", "consumer", "contributor")),
            ("beta", ("consumer", "contributor")),
            ("carol", ("consumer",)),
            ("jury", ("admin",)),
        )
        consumers = (beta, carol)

        # 2. A submits; pending: in the queue, invisible to consumers.
        (alpha.home / "submission.csv").write_text(SUBMISSION)
        pushed = alpha.json("push", "submission.csv")
        assert (pushed["accepted"], pushed["refused"]) == (2, 0), pushed

        def sees_nothing(member: Member) -> None:
            pulled = member.pull()
            assert (pulled["versions"], pulled["held"], pulled["held_tombstones"]) == (0, 0, 0), (
                f"{member.org} pulled a pending record: {pulled}"
            )

        def refused_roles() -> None:  # B holds no admin role
            refused = beta.run("review", "approve", DISPUTED, expect=3)
            assert "organisation 'beta' lacks the role admin" in refused.stderr, refused.stderr
            assert "urn:hashfed:problem:forbidden-role" in refused.stderr

        def refused_own() -> None:  # A's admin may not approve A's own record
            own = alpha.json("review", "approve", DISPUTED, expect=1)
            assert own["counts"] == {"accepted": 0, "duplicate": 0, "refused": 1}, own
            problem = own["results"][0]["problem"]
            assert problem["type"] == "urn:hashfed:problem:conflict-of-interest", problem
            assert "party to this record" in problem["detail"]

        queue, *_ = parallel(
            lambda: jury.json("review", "list"),
            lambda: sees_nothing(beta),
            lambda: sees_nothing(carol),
            refused_roles,
            refused_own,
        )
        pending = by_record(queue["items"])
        assert set(pending) == {DISPUTED_ID, CONTROL_ID}, queue
        for item in pending.values():
            assert item["state"] == "pending" and item["contributors"] == ["alpha"], item

        # 3. J approves; B and C pull both records, approved and undisputed. (Every
        # consumer's store is read directly; C's is also read through 'hashfed export'.)
        approved = jury.json("review", "approve", DISPUTED, CONTROL, "--note", "clear match")
        assert approved["counts"] == {"accepted": 2, "duplicate": 0, "refused": 0}, approved

        def sees_approved(member: Member) -> None:
            pulled = member.pull()
            assert (pulled["new"], pulled["held"]) == (2, 2), pulled
            leaf = pulled_leaf(member, DISPUTED_ID)
            assert (leaf["state"], leaf["disputed"]) == ("approved", False), leaf
            assert (leaf["labels"], leaf["contributors"]) == (["recruitment"], ["alpha"]), leaf
            assert pulled_leaf(member, CONTROL_ID)["state"] == "approved"
            if member is carol:
                held = by_record(member.export())
                assert set(held) == {DISPUTED_ID, CONTROL_ID}
                assert held[DISPUTED_ID]["state"] == "approved"
                assert held[DISPUTED_ID]["labels"] == ["recruitment"]

        each(consumers, sees_approved)

        # 4. B disputes; every consumer sees the flag on its next pull.
        opened = beta.json(
            "dispute", "open", DISPUTED, "--reason", "false_positive", "--note", DISPUTE_NOTE
        )
        dispute = opened["results"][0]["dispute"]
        assert opened["results"][0]["record"] == DISPUTED_ID

        def sees_disputed(member: Member) -> None:
            update = member.pull()
            assert (update["versions"], update["updated"], update["tombstones"]) == (1, 1, 0)
            leaf = pulled_leaf(member, DISPUTED_ID)
            assert leaf["disputed"] is True and leaf["state"] == "approved", leaf
            assert pulled_leaf(member, CONTROL_ID)["disputed"] is False
            if member is not carol:
                return
            # The flag must reach the member's own output, not only the stored leaf.
            held, undisputed = parallel(member.export, lambda: member.export("--only-undisputed"))
            held = by_record(held)
            assert held[DISPUTED_ID].get("disputed") is True, held[DISPUTED_ID]
            assert held[CONTROL_ID].get("disputed") is False, held[CONTROL_ID]
            assert [r["record"] for r in undisputed] == [CONTROL_ID], undisputed

        each(consumers, sees_disputed)

        # 5. A's admin cannot judge a dispute on A's own record; J, uninvolved, retracts.
        coi = alpha.run("dispute", "resolve", dispute, "--retract", "--note", "mine", expect=3)
        assert "urn:hashfed:problem:conflict-of-interest" in coi.stderr, coi.stderr
        assert "'alpha' is a party to this record" in coi.stderr
        decided = jury.json("dispute", "resolve", dispute, "--retract", "--note", RESOLUTION_NOTE)
        assert decided["results"][0]["dispute_state"] == "retracted", decided

        # 6. Every consumer pulls the tombstone.
        def sees_tombstone(member: Member) -> None:
            update = member.pull()
            assert (update["tombstones"], update["held_tombstones"]) == (1, 1), update
            assert pulled_leaf(member, DISPUTED_ID)["state"] == "retracted"
            if member is not carol:
                return
            everything, live = parallel(lambda: member.export("--include-retracted"), member.export)
            everything = by_record(everything)
            assert everything[DISPUTED_ID]["state"] == "retracted", everything[DISPUTED_ID]
            assert everything[CONTROL_ID]["state"] == "approved"
            assert [r["record"] for r in live] == [CONTROL_ID]

        each(consumers, sees_tombstone)

        # 7. Inboxes and the dispute list tell each party every step.
        inbox, beta_inbox, disputes, not_party = parallel(
            lambda: alpha.json("inbox"),
            lambda: beta.json("inbox"),
            lambda: beta.json("dispute", "list"),
            lambda: carol.json("dispute", "list"),
        )
        steps = [n for n in inbox if n["record"] == DISPUTED_ID]
        assert [(n["kind"], n["detail"]["by"]) for n in steps] == [
            ("review.approve", "jury"),
            ("dispute.opened", "beta"),
            ("dispute.resolved", "jury"),
        ], inbox
        assert [n["dispute"] for n in steps] == [None, dispute, dispute]
        assert steps[1]["detail"]["reason"] == "false_positive"
        assert steps[1]["detail"]["note"] == DISPUTE_NOTE
        assert steps[2]["detail"]["outcome"] == "retracted"
        assert steps[2]["detail"]["note"] == RESOLUTION_NOTE
        assert [n["index"] for n in inbox] == sorted(n["index"] for n in inbox)
        assert [n["kind"] for n in inbox if n["record"] == CONTROL_ID] == ["review.approve"]
        beta_steps = [n["kind"] for n in beta_inbox if n["record"] == DISPUTED_ID]
        assert beta_steps == ["dispute.opened", "dispute.resolved"], beta_inbox

        assert len(disputes) == 1, disputes
        assert disputes[0]["id"] == dispute and disputes[0]["record"] == DISPUTED_ID
        assert disputes[0]["opened_by"] == "beta" and disputes[0]["reason"] == "false_positive"
        assert disputes[0]["state"] == "retracted"
        assert disputes[0]["votes"] == {"jury": "retract"}  # A's refused vote did not count
        assert not_party == []  # C is not a party to it
        assert alpha.json("inbox") == []  # the inbox remembers what it showed

        # 8. A retracted signal cannot be brought back by submitting it again, neither by
        # another member nor by its own contributor (docs/governance.md: invalid-transition).
        again = f"signal_type,value,labels\npdq,{PDQ},recruitment\n"
        for member in (beta, alpha):
            (member.home / "again.csv").write_text(again)
        by_other, by_contributor = parallel(
            lambda: beta.run("push", "again.csv", "--json", expect=None),
            lambda: alpha.run("push", "again.csv", "--json", expect=None),
        )
        assert_nothing_new(carol)  # the record stayed retracted either way
        for done in (by_other, by_contributor):
            summary = json.loads(done.stdout)
            assert (summary["accepted"], summary["duplicate"], summary["refused"]) == (0, 0, 1), (
                done.args,
                summary,
            )
            assert summary["refusals"][0]["problem"] == "invalid-transition", summary
            assert done.returncode == 1, done.args  # some items refused
