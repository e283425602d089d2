"""The federation's rules as pure functions: states, transitions, quorum, conflict of interest.

Nothing here does I/O. The server applies these functions to statements as
they arrive; an auditor replays the same functions over the whole log and
must reach the same states. Every (state, action, role) is either a listed
transition or refused with a problem type.
"""

from __future__ import annotations

import enum
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field

from federation.protocol.problems import HashfedError, Problem
from federation.protocol.statements import Role


class State(enum.StrEnum):
    PENDING = "pending"
    APPROVED = "approved"
    REJECTED = "rejected"
    WITHDRAWN = "withdrawn"  # every contributor withdrew: tombstone
    RETRACTED = "retracted"  # governance retracted it after a dispute: tombstone


TOMBSTONES = frozenset({State.WITHDRAWN, State.RETRACTED})


class Action(enum.StrEnum):
    SUBMIT = "submit"  # a (new) contribution
    WITHDRAW = "withdraw"  # a contributor withdraws its last remaining contribution
    APPROVE = "approve"
    REJECT = "reject"
    REQUEST_CHANGES = "request_changes"
    OPINION = "opinion"
    DISPUTE = "dispute"
    UPHOLD = "uphold"
    RETRACT = "retract"


class OpinionKind(enum.StrEnum):
    SEEN = "seen"
    AGREE = "agree"
    DISAGREE_LABELS = "disagree_labels"
    FALSE_POSITIVE = "false_positive"


POSITIVE_OPINIONS = frozenset({OpinionKind.SEEN, OpinionKind.AGREE})


class DisputeReason(enum.StrEnum):
    FALSE_POSITIVE = "false_positive"
    WRONG_LABELS = "wrong_labels"
    NOT_IN_TAXONOMY = "not_in_taxonomy"
    LEGAL = "legal"
    OTHER = "other"


class RejectReason(enum.StrEnum):
    NOT_TVEC = "not_tvec"  # not terrorist or violent-extremist content
    WRONG_LABELS = "wrong_labels"
    LOW_QUALITY = "low_quality"  # e.g. a PDQ hash of too low quality
    DUPLICATE = "duplicate"
    INSUFFICIENT_CONTEXT = "insufficient_context"
    OTHER = "other"


# Who may sign each statement type: the organisation must hold one of these roles.
STATEMENT_ROLES: Mapping[str, frozenset[Role]] = {
    "federation.genesis": frozenset({Role.ADMIN}),
    "policy.set": frozenset({Role.ADMIN}),
    "org.admit": frozenset({Role.ADMIN}),
    "org.suspend": frozenset({Role.ADMIN}),
    "org.reinstate": frozenset({Role.ADMIN}),
    "key.add": frozenset({Role.ADMIN}),
    "key.retire": frozenset({Role.ADMIN}),
    "key.revoke": frozenset({Role.ADMIN}),
    "submissions": frozenset({Role.CONTRIBUTOR}),
    "withdrawals": frozenset({Role.CONTRIBUTOR}),
    "reviews": frozenset({Role.ADMIN}),
    "opinions": frozenset({Role.CONSUMER}),
    "dispute.open": frozenset({Role.CONSUMER, Role.CONTRIBUTOR}),
    "dispute.resolve": frozenset({Role.ADMIN}),
}


def check_may_sign(statement_type: str, roles: Collection[str]) -> None:
    """Refuse a statement type the signing organisation's roles do not allow."""
    allowed = STATEMENT_ROLES.get(statement_type)
    if allowed is None:
        raise HashfedError(Problem.STATEMENT_WRONG_TYPE, f"unknown statement type {statement_type}")
    if allowed.isdisjoint(roles):
        wanted = " or ".join(sorted(r.value for r in allowed))
        raise HashfedError(
            Problem.FORBIDDEN_ROLE, f"a {statement_type} statement needs the role {wanted}"
        )


_APPROVED, _PENDING = State.APPROVED, State.PENDING  # class lookups of members are slow


@dataclass(frozen=True)
class Policy:
    """The federation's policy document (versioned; changed by signed admin statements)."""

    approvals_required: int = 1
    submitter_admin_may_approve: bool = False
    trusted_contributors: frozenset[str] = frozenset()
    dispute_quorum: int = 1
    auto_approve: bool = False

    def initial_state(self, contributor: str) -> State:
        """Where a new submission lands: approved when trusted (or auto-approve), else pending."""
        if self.auto_approve or contributor in self.trusted_contributors:
            return _APPROVED
        return _PENDING


# Which roles may take which action, and from which states. This table is the
# state machine; `transition` is its only reader.
TRANSITIONS: Mapping[tuple[State, Action], tuple[frozenset[Role], State | None]] = {
    # (state, action): (roles allowed, next state; None = state unchanged)
    (State.PENDING, Action.SUBMIT): (frozenset({Role.CONTRIBUTOR}), None),
    (State.APPROVED, Action.SUBMIT): (frozenset({Role.CONTRIBUTOR}), None),
    (State.WITHDRAWN, Action.SUBMIT): (frozenset({Role.CONTRIBUTOR}), State.PENDING),
    (State.PENDING, Action.WITHDRAW): (frozenset({Role.CONTRIBUTOR}), State.WITHDRAWN),
    (State.APPROVED, Action.WITHDRAW): (frozenset({Role.CONTRIBUTOR}), State.WITHDRAWN),
    (State.REJECTED, Action.WITHDRAW): (frozenset({Role.CONTRIBUTOR}), State.WITHDRAWN),
    (State.PENDING, Action.APPROVE): (frozenset({Role.ADMIN}), State.APPROVED),
    (State.PENDING, Action.REJECT): (frozenset({Role.ADMIN}), State.REJECTED),
    (State.PENDING, Action.REQUEST_CHANGES): (frozenset({Role.ADMIN}), None),
    (State.APPROVED, Action.OPINION): (frozenset({Role.CONSUMER}), None),
    (State.APPROVED, Action.DISPUTE): (frozenset({Role.CONSUMER, Role.CONTRIBUTOR}), None),
    (State.APPROVED, Action.UPHOLD): (frozenset({Role.ADMIN}), None),
    (State.APPROVED, Action.RETRACT): (frozenset({Role.ADMIN}), State.RETRACTED),
}


def transition(state: State, action: Action, roles: Collection[str]) -> State:
    """The state after ``action`` by an organisation holding ``roles``, or a refusal.

    Refusals: FORBIDDEN_ROLE when the action exists from this state but the
    roles do not allow it; INVALID_TRANSITION when it does not exist here.
    """
    entry = TRANSITIONS.get((state, action))
    if entry is None:
        raise HashfedError(
            Problem.INVALID_TRANSITION, f"cannot {action.value} a record that is {state.value}"
        )
    allowed, following = entry
    if allowed.isdisjoint(roles):
        wanted = " or ".join(sorted(r.value for r in allowed))
        raise HashfedError(Problem.FORBIDDEN_ROLE, f"{action.value} needs the role {wanted}")
    return state if following is None else following


def check_no_conflict(
    actor_org: str, parties: Iterable[str], action: Action, *, allowed: bool = False
) -> None:
    """Refuse an admin deciding a case its own organisation is party to."""
    if allowed:
        return
    if actor_org in set(parties):
        raise HashfedError(
            Problem.CONFLICT_OF_INTEREST,
            f"{actor_org!r} is a party to this record and cannot {action.value} it; "
            "an admin of another organisation must decide",
        )


@dataclass(frozen=True)
class Tally:
    """Votes counted towards a quorum, one per organisation."""

    votes: Mapping[str, str] = field(default_factory=dict)  # org -> choice

    def add(self, org: str, choice: str) -> Tally:
        if org in self.votes:
            raise HashfedError(Problem.CONFLICT, f"{org!r} has already decided ({self.votes[org]})")
        return Tally({**self.votes, org: choice})

    def count(self, choice: str) -> int:
        return sum(1 for v in self.votes.values() if v == choice)

    def reached(self, choice: str, quorum: int) -> bool:
        return self.count(choice) >= quorum


def opinion_flagged(counts: Mapping[str, int]) -> bool:
    """A record is flagged disputed when a false positive meets a positive opinion."""
    positives = sum(counts.get(k, 0) for k in POSITIVE_OPINIONS)
    return counts.get(OpinionKind.FALSE_POSITIVE, 0) > 0 and positives > 0
