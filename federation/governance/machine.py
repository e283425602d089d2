"""A record's life as a pure state machine over statements.

The server loads the :class:`RecordState` of every record a statement
touches, applies one function per item, and stores the results; an auditor
replays the same functions over the whole log. Each function either changes
the record (the caller then appends a version) or returns a non-change
(duplicate), or raises ``HashfedError`` (a refused item).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from typing import Any

from federation.governance.rules import (
    TOMBSTONES,
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

# Per item, an enum member looked up on its class costs 80 ns; these cost 10.
_APPROVED, _PENDING, _SUBMIT = State.APPROVED, State.PENDING, Action.SUBMIT


@dataclass(slots=True)
class Dispute:
    """An open or resolved dispute on a record."""

    id: str
    record: str
    opened_by: str
    reason: str
    state: str = "open"  # open | upheld | retracted
    tally: Tally = field(default_factory=Tally)


@dataclass(slots=True)
class RecordState:
    """Everything the rules need to know about one record."""

    id: str
    signal_type: str
    value: str
    state: State = State.PENDING
    version: int = 0
    published: bool = False
    contributions: dict[str, tuple[str, ...]] = field(default_factory=dict)  # org -> labels
    approvals: set[str] = field(default_factory=set)  # admin orgs, current review round
    opinions: dict[str, str] = field(default_factory=dict)  # org -> opinion kind
    open_disputes: dict[str, str] = field(default_factory=dict)  # dispute id -> opened by
    relabelled: tuple[str, ...] | None = None  # labels set by governance on uphold

    @property
    def labels(self) -> list[str]:
        if self.relabelled is not None:
            return list(self.relabelled)
        contributions = self.contributions
        if len(contributions) == 1:  # the common case: no set to merge
            for only in contributions.values():
                return sorted(set(only)) if len(only) > 1 else list(only)
        return sorted({label for ls in contributions.values() for label in ls})

    @property
    def contributors(self) -> list[str]:
        return sorted(self.contributions)

    def opinion_counts(self) -> dict[str, int]:
        if not self.opinions:  # most records: no Counter to build
            return {}
        return dict(sorted(Counter(self.opinions.values()).items()))

    @property
    def disputed(self) -> bool:
        if self.open_disputes:
            return True
        return bool(self.opinions) and opinion_flagged(self.opinion_counts())

    @property
    def visible(self) -> bool:
        """Whether consumers see this version: approved, or a tombstone of what they saw."""
        return self.state == _APPROVED or (self.state in TOMBSTONES and self.published)

    def bump(self) -> None:
        """Count a new version; once approved, consumers have seen the record."""
        self.version += 1
        if self.state == _APPROVED:
            self.published = True

    def version_fields(self, cause: str, time: int) -> dict[str, Any]:
        """The record version as it goes into the log (and the feed)."""
        return {
            "record": self.id,
            "version": self.version,
            "signal_type": self.signal_type,
            "value": self.value,
            "state": self.state.value,
            "labels": self.labels,
            "contributors": self.contributors,
            "disputed": self.disputed,
            "opinions": self.opinion_counts(),
            "cause": cause,
            "time": time,
        }


def _require_exists(record: RecordState) -> None:
    if record.version == 0:
        raise HashfedError(Problem.NOT_FOUND, f"no record {record.id}")


# Each function returns True when the record changed (append a version) and
# False when the item is a duplicate (nothing to write).


def submit(
    record: RecordState,
    org: str,
    roles: Collection[str],
    labels: tuple[str, ...],
    policy: Policy,
) -> bool:
    """A contribution: creates the record (version 0 → 1), adds a contributor, or revives it."""
    if record.version == 0:
        transition(_PENDING, _SUBMIT, roles)  # role check only
        record.state = policy.initial_state(org)
    else:
        # The transition first: a rejected or retracted signal is refused even
        # when the submitter is still listed as its contributor.
        following = transition(record.state, _SUBMIT, roles)
        if org in record.contributions:
            return False
        if record.state in TOMBSTONES:
            record.state = policy.initial_state(org)
            record.approvals.clear()
            record.relabelled = None
        else:
            record.state = following
    record.contributions[org] = labels
    record.bump()
    return True


def withdraw(record: RecordState, org: str, roles: Collection[str]) -> None:
    """Withdraw ``org``'s contribution; the last one leaves a tombstone."""
    _require_exists(record)
    if org not in record.contributions:
        raise HashfedError(
            Problem.NOT_CONTRIBUTOR,
            f"{org!r} has no active contribution to {record.signal_type} {record.value}",
        )
    if len(record.contributions) == 1:
        record.state = transition(record.state, Action.WITHDRAW, roles)
    elif Role.CONTRIBUTOR not in roles:
        raise HashfedError(Problem.FORBIDDEN_ROLE, "withdraw needs the role contributor")
    del record.contributions[org]
    record.bump()


def review(
    record: RecordState,
    org: str,
    roles: Collection[str],
    decision: Action,
    policy: Policy,
) -> bool:
    """An admin decides a pending record: approve (towards quorum), reject, request changes."""
    _require_exists(record)
    if decision not in (Action.APPROVE, Action.REJECT, Action.REQUEST_CHANGES):
        raise HashfedError(Problem.MALFORMED_REQUEST, f"{decision.value} is not a review decision")
    following = transition(record.state, decision, roles)
    check_no_conflict(
        org,
        record.contributions,
        decision,
        allowed=policy.submitter_admin_may_approve and decision == Action.APPROVE,
    )
    if decision == Action.APPROVE:
        if org in record.approvals:
            return False
        record.approvals.add(org)
        if len(record.approvals) >= policy.approvals_required:
            record.state = following
    elif decision == Action.REJECT:
        record.state = following
    record.bump()
    return True


def opine(record: RecordState, org: str, roles: Collection[str], kind: OpinionKind) -> bool:
    """A consumer's opinion on an approved record; one per organisation, the latest counts."""
    _require_exists(record)
    transition(record.state, Action.OPINION, roles)
    if record.opinions.get(org) == kind:
        return False
    record.opinions[org] = kind.value
    record.bump()
    return True


def open_dispute(record: RecordState, dispute: Dispute, roles: Collection[str]) -> None:
    """A member disputes an approved record: flagged ``disputed`` at once."""
    _require_exists(record)
    transition(record.state, Action.DISPUTE, roles)
    if dispute.opened_by in record.open_disputes.values():
        raise HashfedError(
            Problem.CONFLICT, f"{dispute.opened_by!r} already has an open dispute on this record"
        )
    record.open_disputes[dispute.id] = dispute.opened_by
    record.bump()


def resolve_dispute(
    record: RecordState,
    dispute: Dispute,
    org: str,
    roles: Collection[str],
    outcome: Action,
    labels: tuple[str, ...] | None,
    policy: Policy,
) -> bool:
    """An admin's vote on a dispute; at quorum the record is upheld (maybe relabelled) or retracted.

    Returns True when the vote decided the dispute (the record changed).
    """
    _require_exists(record)
    if outcome not in (Action.UPHOLD, Action.RETRACT):
        raise HashfedError(Problem.MALFORMED_REQUEST, f"{outcome.value} is not a resolution")
    if dispute.state != "open":
        raise HashfedError(Problem.INVALID_TRANSITION, f"dispute {dispute.id} is {dispute.state}")
    following = transition(record.state, outcome, roles)
    check_no_conflict(org, [*record.contributions, dispute.opened_by], outcome)
    choice = outcome.value if labels is None else f"{outcome.value}:{','.join(labels)}"
    dispute.tally = dispute.tally.add(org, choice)
    if not dispute.tally.reached(choice, policy.dispute_quorum):
        return False
    dispute.state = "upheld" if outcome == Action.UPHOLD else "retracted"
    record.open_disputes.pop(dispute.id, None)
    if outcome == Action.RETRACT:
        record.state = following
        # A retraction closes every other open dispute on the record.
        record.open_disputes.clear()
    elif labels is not None:
        record.relabelled = labels
    record.bump()
    return True


def new_record(record_id: str, signal_type: str, value: str) -> RecordState:
    return RecordState(id=record_id, signal_type=signal_type, value=value)


def contributors_of(records: Iterable[RecordState]) -> set[str]:
    return {org for r in records for org in r.contributions}
