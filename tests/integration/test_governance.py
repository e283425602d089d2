"""Governance over the API: review quorum, conflict of interest, opinions, disputes, inbox."""

from __future__ import annotations

from typing import Any

import pytest

from clients.client import FederationClient, Identity
from clients.errors import Conflict, ConflictOfInterest, ForbiddenRole, StatementMalformed
from federation.protocol.problems import Problem
from federation.protocol.signals import record_id
from tests.conftest import Federation

MD5 = "0123456789abcdef0123456789abcdef"
RID = record_id("md5", MD5)
ITEM = {"signal_type": "md5", "value": MD5, "labels": ["recruitment"]}


async def feed(client: FederationClient) -> list[dict[str, Any]]:
    items, cursor = [], None
    while True:
        page = await client.feed_page(cursor)
        items += page["items"]
        cursor = page["next_cursor"]
        if not page["has_more"]:
            return items


@pytest.fixture
async def world(fed: Federation) -> dict[str, FederationClient]:
    """Governance plus two admin bodies, a contributor (with an admin of its own) and a consumer."""
    identities: dict[str, Identity] = {
        "alpha": await fed.admit("alpha", ("contributor", "consumer", "admin")),
        "beta": await fed.admit("beta", ("consumer", "contributor")),
        "gamma": await fed.admit("gamma", ("admin",)),
        "delta": await fed.admit("delta", ("admin",)),
        "reader": await fed.admit("reader", ("consumer",)),
    }
    clients = {name: fed.client(identity) for name, identity in identities.items()}
    clients["gov"] = fed.client(fed.governance)
    for client in clients.values():
        await client.__aenter__()
    await clients["gov"].update_policy(auto_approve=False)
    return clients


async def test_quorum_of_two(world: dict[str, FederationClient]) -> None:
    await world["gov"].update_policy(approvals_required=2)
    await world["alpha"].submit([ITEM])
    first = await world["gamma"].review([{"record": RID, "decision": "approve"}])
    assert first["counts"]["accepted"] == 1
    assert await feed(world["reader"]) == []  # one approval of two: still pending
    queue = await world["gov"].review_queue()
    assert [(i["record"], i["approvals"]) for i in queue["items"]] == [(RID, ["gamma"])]
    await world["delta"].review([{"record": RID, "decision": "approve"}])
    versions = await feed(world["reader"])
    assert [(v["record"], v["state"]) for v in versions] == [(RID, "approved")]
    assert (await world["gov"].review_queue())["items"] == []


async def test_conflict_of_interest_is_refused(world: dict[str, FederationClient]) -> None:
    await world["alpha"].submit([ITEM])
    result = await world["alpha"].review([{"record": RID, "decision": "approve"}])
    assert result["results"][0]["problem"]["type"] == Problem.CONFLICT_OF_INTEREST.uri
    rejected = await world["alpha"].review(
        [{"record": RID, "decision": "reject", "reason": "not_tvec"}]
    )
    assert rejected["counts"]["refused"] == 1
    # Another organisation's admin may decide.
    await world["gamma"].review([{"record": RID, "decision": "reject", "reason": "not_tvec",
                                  "note": "a news photo"}])  # fmt: skip
    record = await world["alpha"].get_record(RID)
    assert record["state"] == "rejected"
    assert await feed(world["reader"]) == []
    # A rejected signal cannot be brought back by submitting it again, by anyone.
    for member in ("beta", "alpha"):
        again = await world[member].submit([{**ITEM, "labels": ["glorification"]}])
        assert again["results"][0]["problem"]["type"] == Problem.INVALID_TRANSITION.uri


async def test_review_refusals(world: dict[str, FederationClient]) -> None:
    await world["alpha"].submit([ITEM])
    with pytest.raises(ForbiddenRole):
        await world["beta"].review([{"record": RID, "decision": "approve"}])
    with pytest.raises(ForbiddenRole):
        await world["reader"].review_queue()
    bad = await world["gamma"].review(
        [
            {"record": RID, "decision": "reject"},  # no reason
            {"record": "f" * 32, "decision": "approve"},  # no such record
            {"record": "xyz", "decision": "approve"},
            {"record": RID, "decision": "request_changes"},  # a note is required
        ]
    )
    problems = [r["problem"]["type"] for r in bad["results"]]
    assert problems == [Problem.MALFORMED_REQUEST.uri, Problem.NOT_FOUND.uri,
                        Problem.MALFORMED_REQUEST.uri, Problem.MALFORMED_REQUEST.uri]  # fmt: skip
    asked = await world["gamma"].review(
        [{"record": RID, "decision": "request_changes", "note": "which video is this from?"}]
    )
    assert asked["counts"]["accepted"] == 1
    inbox = (await world["alpha"].inbox())["items"]
    assert [n["kind"] for n in inbox] == ["review.request_changes"]
    assert inbox[0]["detail"]["note"] == "which video is this from?"


async def test_review_queue_filters_and_order(world: dict[str, FederationClient]) -> None:
    await world["alpha"].submit([ITEM])
    await world["beta"].submit(
        [{"signal_type": "pdq", "value": "e" * 64, "labels": ["glorification"]}]
    )
    queue = await world["gov"].review_queue()
    assert [i["contributors"] for i in queue["items"]] == [["alpha"], ["beta"]]  # oldest first
    assert len((await world["gov"].review_queue(signal_type="pdq"))["items"]) == 1
    assert len((await world["gov"].review_queue(label="recruitment"))["items"]) == 1
    assert len((await world["gov"].review_queue(contributor="beta"))["items"]) == 1
    assert len((await world["gov"].review_queue(min_age_s=3600))["items"]) == 0
    page = await world["gov"].review_queue(limit=1)
    rest = await world["gov"].review_queue(after=page["next"])
    assert [i["record"] for i in page["items"] + rest["items"]] == [
        i["record"] for i in queue["items"]
    ]


async def test_opinions_flag_a_record(world: dict[str, FederationClient]) -> None:
    await world["gov"].update_policy(auto_approve=True)
    await world["alpha"].submit([ITEM])
    await world["reader"].opine([{"record": RID, "kind": "seen"}])
    assert (await feed(world["reader"]))[-1]["disputed"] is False
    await world["beta"].opine([{"record": RID, "kind": "false_positive"}])
    last = (await feed(world["reader"]))[-1]
    assert last["disputed"] is True and last["opinions"] == {"false_positive": 1, "seen": 1}
    again = await world["beta"].opine([{"record": RID, "kind": "false_positive"}])
    assert again["counts"]["duplicate"] == 1
    with pytest.raises(ForbiddenRole):
        await world["gamma"].opine([{"record": RID, "kind": "seen"}])
    assert "record.flagged" in [n["kind"] for n in (await world["alpha"].inbox())["items"]]


async def test_dispute_walkthrough(world: dict[str, FederationClient]) -> None:
    await world["gov"].update_policy(dispute_quorum=2)
    await world["alpha"].submit([ITEM])
    await world["gamma"].review([{"record": RID, "decision": "approve"}])
    opened = await world["beta"].open_dispute(RID, "false_positive", "this is a film still")
    dispute = opened["results"][0]["dispute"]
    assert (await feed(world["reader"]))[-1]["disputed"] is True
    with pytest.raises(Conflict):
        await world["beta"].open_dispute(RID, "other", "again")
    # Parties may not decide: alpha contributed (and is an admin), beta disputed.
    with pytest.raises(ConflictOfInterest):
        await world["alpha"].resolve_dispute(dispute, "retract", "ours is right")
    with pytest.raises(StatementMalformed):
        await world["gamma"].resolve_dispute(dispute, "retract", "", None)
    vote = await world["gamma"].resolve_dispute(dispute, "retract", "agreed, a film still")
    assert vote["results"][0]["dispute_state"] == "open"  # one vote of two
    with pytest.raises(Conflict):
        await world["gamma"].resolve_dispute(dispute, "retract", "again")
    await world["delta"].resolve_dispute(dispute, "retract", "film still confirmed")
    tombstone = (await feed(world["reader"]))[-1]
    assert (tombstone["state"], tombstone["disputed"]) == ("retracted", False)
    shown = await world["beta"].disputes()
    assert shown[0]["state"] == "retracted" and set(shown[0]["votes"]) == {"gamma", "delta"}
    assert await world["reader"].disputes() == []  # not a party
    kinds = [n["kind"] for n in (await world["alpha"].inbox())["items"]]
    assert kinds == ["review.approve", "dispute.opened", "dispute.vote", "dispute.resolved"]
    beta_kinds = [n["kind"] for n in (await world["beta"].inbox())["items"]]
    assert beta_kinds == ["dispute.opened", "dispute.vote", "dispute.resolved"]


async def test_uphold_with_relabel(world: dict[str, FederationClient]) -> None:
    await world["gov"].update_policy(auto_approve=True)
    await world["alpha"].submit([ITEM])
    opened = await world["beta"].open_dispute(RID, "wrong_labels", "this is glorification")
    dispute = opened["results"][0]["dispute"]
    await world["gamma"].resolve_dispute(dispute, "uphold", "relabelled", ["glorification"])
    last = (await feed(world["reader"]))[-1]
    assert (last["state"], last["labels"], last["disputed"]) == (
        "approved", ["glorification"], False,
    )  # fmt: skip


async def test_policy_changes_are_versioned_and_checked(world: dict[str, FederationClient]) -> None:
    current = await world["gov"].get_policy()
    with pytest.raises(Conflict):
        await world["gov"].set_policy(current["policy"], current["version"])  # stale version
    with pytest.raises(StatementMalformed):
        await world["gov"].set_policy({**current["policy"], "approvals_required": 0},
                                      current["version"] + 1)  # fmt: skip
    with pytest.raises(ForbiddenRole):
        await world["beta"].update_policy(auto_approve=True)
    await world["gov"].update_policy(taxonomy={"recruitment": "Recruitment"})
    refused = await world["alpha"].submit(
        [{"signal_type": "md5", "value": "f" * 32, "labels": ["glorification"]}]
    )
    assert refused["results"][0]["problem"]["type"] == Problem.UNKNOWN_LABEL.uri


async def test_trusted_contributor_skips_review(world: dict[str, FederationClient]) -> None:
    await world["gov"].update_policy(trusted_contributors=["alpha"])
    await world["alpha"].submit([ITEM])
    await world["beta"].submit(
        [{"signal_type": "md5", "value": "e" * 32, "labels": ["glorification"]}]
    )
    assert [v["contributors"] for v in await feed(world["reader"])] == [["alpha"]]
