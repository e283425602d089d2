"""The rules: every (state, action, role) decided; random statement sequences stay lawful."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from federation.governance import machine
from federation.governance.machine import Dispute, RecordState
from federation.governance.rules import (
    TRANSITIONS,
    Action,
    OpinionKind,
    Policy,
    State,
    Tally,
    check_no_conflict,
    opinion_flagged,
    transition,
)
from federation.protocol.problems import HashfedError, Problem
from federation.protocol.statements import Role

ALL_ROLES = list(Role)


@pytest.mark.parametrize(
    ("state", "action", "role"), list(itertools.product(State, Action, ALL_ROLES))
)
def test_every_state_action_role_is_decided(state: State, action: Action, role: Role) -> None:
    entry = TRANSITIONS.get((state, action))
    if entry is None:
        with pytest.raises(HashfedError) as info:
            transition(state, action, {role})
        assert info.value.problem is Problem.INVALID_TRANSITION
        return
    allowed, following = entry
    if role in allowed:
        assert transition(state, action, {role}) == (following or state)
    else:
        with pytest.raises(HashfedError) as info:
            transition(state, action, {role})
        assert info.value.problem is Problem.FORBIDDEN_ROLE


def test_terminal_decisions_cannot_be_reopened_by_submission() -> None:
    for state in (State.REJECTED, State.RETRACTED):
        with pytest.raises(HashfedError) as info:
            transition(state, Action.SUBMIT, {Role.CONTRIBUTOR})
        assert info.value.problem is Problem.INVALID_TRANSITION


def test_conflict_of_interest() -> None:
    with pytest.raises(HashfedError) as info:
        check_no_conflict("acme", ["acme", "beta"], Action.APPROVE)
    assert info.value.problem is Problem.CONFLICT_OF_INTEREST
    check_no_conflict("gamma", ["acme", "beta"], Action.APPROVE)
    check_no_conflict("acme", ["acme"], Action.APPROVE, allowed=True)


def test_tally_counts_one_vote_per_organisation() -> None:
    tally = Tally().add("a", "retract").add("b", "uphold")
    assert tally.count("retract") == 1 and not tally.reached("retract", 2)
    assert tally.add("c", "retract").reached("retract", 2)
    with pytest.raises(HashfedError):
        tally.add("a", "uphold")


def test_opinion_flag_needs_a_positive_and_a_false_positive() -> None:
    assert not opinion_flagged({"false_positive": 3})
    assert not opinion_flagged({"seen": 3})
    assert opinion_flagged({"false_positive": 1, "agree": 1})
    assert opinion_flagged({"false_positive": 1, "seen": 1})


ADMIN, CONTRIB, CONSUMER = {Role.ADMIN}, {Role.CONTRIBUTOR}, {Role.CONSUMER, Role.CONTRIBUTOR}


def _record() -> RecordState:
    return machine.new_record("r" * 32, "md5", "0" * 32)


def test_quorum_of_two_approvals_from_distinct_organisations() -> None:
    policy = Policy(approvals_required=2)
    record = _record()
    machine.submit(record, "acme", CONTRIB, ("recruitment",), policy)
    assert record.state == State.PENDING and not record.visible
    assert machine.review(record, "admin1", ADMIN, Action.APPROVE, policy)
    assert record.state == State.PENDING
    assert not machine.review(record, "admin1", ADMIN, Action.APPROVE, policy)  # same org again
    assert machine.review(record, "admin2", ADMIN, Action.APPROVE, policy)
    assert record.state == State.APPROVED and record.visible and record.published


def test_submitter_admin_cannot_approve_own_unless_policy_allows() -> None:
    record = _record()
    machine.submit(record, "acme", CONTRIB, ("recruitment",), Policy())
    with pytest.raises(HashfedError) as info:
        machine.review(record, "acme", ADMIN, Action.APPROVE, Policy())
    assert info.value.problem is Problem.CONFLICT_OF_INTEREST
    with pytest.raises(HashfedError):
        machine.review(
            record, "acme", ADMIN, Action.REJECT, Policy(submitter_admin_may_approve=True)
        )
    machine.review(record, "acme", ADMIN, Action.APPROVE, Policy(submitter_admin_may_approve=True))
    assert record.state == State.APPROVED


def test_dispute_flow_uphold_with_relabel_and_retract() -> None:
    policy = Policy(auto_approve=True, dispute_quorum=2)
    record = _record()
    machine.submit(record, "acme", CONTRIB, ("recruitment",), policy)
    dispute = Dispute("d" * 32, record.id, opened_by="beta", reason="wrong_labels")
    machine.open_dispute(record, dispute, CONSUMER)
    assert record.disputed and record.visible
    for party in ("acme", "beta"):
        with pytest.raises(HashfedError) as info:
            machine.resolve_dispute(record, dispute, party, ADMIN, Action.UPHOLD, None, policy)
        assert info.value.problem is Problem.CONFLICT_OF_INTEREST
    labels = ("glorification",)
    assert not machine.resolve_dispute(record, dispute, "g1", ADMIN, Action.UPHOLD, labels, policy)
    assert machine.resolve_dispute(record, dispute, "g2", ADMIN, Action.UPHOLD, labels, policy)
    assert dispute.state == "upheld" and not record.disputed and record.labels == ["glorification"]
    second = Dispute("e" * 32, record.id, opened_by="beta", reason="false_positive")
    machine.open_dispute(record, second, CONSUMER)
    machine.resolve_dispute(record, second, "g1", ADMIN, Action.RETRACT, None, policy)
    machine.resolve_dispute(record, second, "g2", ADMIN, Action.RETRACT, None, policy)
    assert record.state == State.RETRACTED and record.visible  # tombstone reaches consumers
    with pytest.raises(HashfedError):
        machine.submit(record, "gamma", CONTRIB, ("recruitment",), policy)


# Property: random statement sequences never reach a state the rules forbid.

ORGS = ["acme", "beta", "gamma", "delta"]
ROLESETS = [frozenset({Role.CONTRIBUTOR}), frozenset({Role.CONSUMER}), frozenset({Role.ADMIN}),
            frozenset({Role.CONTRIBUTOR, Role.CONSUMER}), frozenset({Role.AUDITOR})]  # fmt: skip
steps = st.lists(
    st.tuples(
        st.sampled_from(list(Action)),
        st.sampled_from(ORGS),
        st.sampled_from(ROLESETS),
        st.sampled_from(list(OpinionKind)),
    ),
    max_size=40,
)


@settings(max_examples=300, deadline=None)
@given(steps, st.integers(1, 3), st.integers(1, 2), st.booleans())
def test_random_sequences_stay_lawful(
    sequence: list[tuple[Action, str, frozenset[Role], OpinionKind]],
    approvals: int,
    quorum: int,
    auto: bool,
) -> None:
    policy = Policy(approvals_required=approvals, dispute_quorum=quorum, auto_approve=auto)
    record = _record()
    disputes: list[Dispute] = []
    ever_approved_with_quorum = auto
    for n, (action, org, roles, kind) in enumerate(sequence):
        before = (record.state, record.version)
        try:
            if action == Action.SUBMIT:
                machine.submit(record, org, roles, ("recruitment",), policy)
            elif action == Action.WITHDRAW:
                machine.withdraw(record, org, roles)
            elif action in (Action.APPROVE, Action.REJECT, Action.REQUEST_CHANGES):
                machine.review(record, org, roles, action, policy)
            elif action == Action.OPINION:
                machine.opine(record, org, roles, kind)
            elif action == Action.DISPUTE:
                d = Dispute(f"{n:032x}", record.id, opened_by=org, reason="other")
                machine.open_dispute(record, d, roles)
                disputes.append(d)
            elif disputes:
                machine.resolve_dispute(record, disputes[-1], org, roles, action, None, policy)
        except HashfedError as err:
            # A refusal changes nothing.
            assert (record.state, record.version) == before
            assert err.problem in {
                Problem.INVALID_TRANSITION, Problem.FORBIDDEN_ROLE, Problem.CONFLICT_OF_INTEREST,
                Problem.NOT_CONTRIBUTOR, Problem.CONFLICT, Problem.NOT_FOUND,
            }  # fmt: skip
            continue
        if record.version == 0:
            continue  # nothing was ever submitted
        if record.state == State.APPROVED and len(record.approvals) >= approvals:
            ever_approved_with_quorum = True
        # Invariants of a lawful record:
        assert record.version >= before[1]
        if record.state == State.APPROVED and not auto:
            assert ever_approved_with_quorum or len(record.approvals) >= approvals
        if record.state == State.WITHDRAWN:
            assert not record.contributions
        if record.state in (State.PENDING, State.APPROVED):
            assert record.contributions
        if record.state != State.APPROVED:
            assert not record.open_disputes or record.state == State.WITHDRAWN
        if record.published is False:
            assert record.state != State.APPROVED


def test_every_statement_type_has_signing_roles() -> None:
    from federation.governance.rules import STATEMENT_ROLES
    from federation.protocol.statements import StatementType

    assert set(STATEMENT_ROLES) == {t.value for t in StatementType}
