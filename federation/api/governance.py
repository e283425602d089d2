"""Governance endpoints: policy, review queue, opinions, disputes, inbox."""

from __future__ import annotations

import time
from typing import Any

import orjson
from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import and_, or_, select, tuple_

from federation.api import models as m
from federation.api.context import DB, INTAKE
from federation.api.routes import (
    Route,
    _authorised,
    accept_statement,
    int_query,
    json_response,
    read_envelope,
)
from federation.auth.middleware import principal_of
from federation.governance.policy import current_policy
from federation.protocol.problems import HashfedError, Problem
from federation.protocol.statements import Role, StatementType
from federation.store.schema import disputes, notifications, records

MAX_QUEUE_PAGE = 1000
OVERSEERS = (Role.ADMIN, Role.AUDITOR)


class PolicyOut(BaseModel):
    model_config = ConfigDict(extra="forbid")
    version: int
    policy: dict[str, Any]


class QueueItem(BaseModel):
    model_config = ConfigDict(extra="forbid")
    record: str
    signal_type: str
    value: str
    state: str
    labels: list[str]
    contributors: list[str]
    approvals: list[str]
    version: int
    head_index: int
    updated_at: int


class ReviewQueue(BaseModel):
    model_config = ConfigDict(extra="forbid")
    items: list[QueueItem]
    next: int | None = Field(description="Pass as 'after' for the next page")


class ReviewQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")
    state: str = Field("pending", description="pending | rejected | approved")
    signal_type: str | None = None
    label: str | None = None
    contributor: str | None = None
    min_age_s: int | None = Field(None, description="Only records unchanged for this long")
    after: int | None = Field(None, description="head_index of the last item seen")
    limit: int = Field(100, ge=1, le=MAX_QUEUE_PAGE)


class DisputeOut(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str
    record: str
    opened_by: str
    reason: str
    note: str
    state: str
    votes: dict[str, str]
    opened_index: int
    resolved_index: int | None


class DisputeList(BaseModel):
    model_config = ConfigDict(extra="forbid")
    disputes: list[DisputeOut]


class Notification(BaseModel):
    model_config = ConfigDict(extra="forbid")
    cursor: str
    index: int = Field(description="Log index of the version or statement it is about")
    kind: str = Field(
        description="review.approve | review.reject | review.request_changes | "
        "dispute.opened | dispute.vote | dispute.resolved | record.flagged"
    )
    record: str | None
    dispute: str | None
    detail: dict[str, Any]


class Inbox(BaseModel):
    model_config = ConfigDict(extra="forbid")
    items: list[Notification]
    next_cursor: str | None


async def get_policy(request: web.Request) -> web.Response:
    principal_of(request)
    async with request.app[DB].reading() as conn:
        policy = await current_policy(conn)
    return json_response({"version": policy.version, "policy": policy.document.model_dump()})


async def post_policy(request: web.Request) -> web.Response:
    outcome = await accept_statement(request, (Role.ADMIN,), frozenset({StatementType.POLICY_SET}))
    return json_response(outcome.result, replayed=outcome.replayed)


async def get_reviews(request: web.Request) -> web.Response:
    _authorised(request, OVERSEERS)
    q = request.query
    state = q.get("state", "pending")
    if state not in ("pending", "rejected", "approved"):
        raise HashfedError(Problem.MALFORMED_REQUEST, "'state' is pending, rejected or approved")
    limit = min(int_query(request, "limit", 100), MAX_QUEUE_PAGE)
    conditions = [records.c.state == state]
    if "after" in q:
        conditions.append(records.c.head_idx > int_query(request, "after", 0, minimum=0))
    if "signal_type" in q:
        conditions.append(records.c.signal_type == q["signal_type"])
    if "label" in q:
        conditions.append(records.c.labels.contains(orjson.dumps(q["label"]).decode()))
    if "contributor" in q:
        conditions.append(records.c.contributors.contains(orjson.dumps(q["contributor"]).decode()))
    if "min_age_s" in q:
        cutoff = int(time.time()) - int_query(request, "min_age_s", 0, minimum=0)
        conditions.append(records.c.updated_at <= cutoff)
    async with request.app[DB].reading() as conn:
        rows = (
            await conn.execute(
                select(records).where(and_(*conditions)).order_by(records.c.head_idx).limit(limit)
            )
        ).all()
    items = [
        {
            "record": r.id,
            "signal_type": r.signal_type,
            "value": r.value,
            "state": r.state,
            "labels": orjson.loads(r.labels),
            "contributors": orjson.loads(r.contributors),
            "approvals": orjson.loads(r.gov).get("approvals", []),
            "version": r.version,
            "head_index": r.head_idx,
            "updated_at": r.updated_at,
        }
        for r in rows
    ]
    return json_response(
        {"items": items, "next": items[-1]["head_index"] if len(items) == limit else None}
    )


async def post_reviews(request: web.Request) -> web.Response:
    outcome = await accept_statement(request, (Role.ADMIN,), frozenset({StatementType.REVIEWS}))
    return json_response(outcome.result, replayed=outcome.replayed)


async def post_opinions(request: web.Request) -> web.Response:
    outcome = await accept_statement(request, (Role.CONSUMER,), frozenset({StatementType.OPINIONS}))
    return json_response(outcome.result, replayed=outcome.replayed)


def _dispute_out(row: Any) -> dict[str, Any]:
    return {
        "id": row.id,
        "record": row.record_id,
        "opened_by": row.opened_by,
        "reason": row.reason,
        "note": row.note,
        "state": row.state,
        "votes": orjson.loads(row.votes),
        "opened_index": row.opened_idx,
        "resolved_index": row.resolved_idx,
    }


async def get_disputes(request: web.Request) -> web.Response:
    principal = principal_of(request)
    conditions = []
    if "state" in request.query:
        conditions.append(disputes.c.state == request.query["state"])
    if "record" in request.query:
        conditions.append(disputes.c.record_id == request.query["record"])
    if not principal.roles & set(OVERSEERS):
        # Parties only: the disputing organisation and the record's contributors.
        conditions.append(
            or_(
                disputes.c.opened_by == principal.org_id,
                records.c.contributors.contains(orjson.dumps(principal.org_id).decode()),
            )
        )
    query = (
        select(disputes)
        .join(records, records.c.id == disputes.c.record_id)
        .where(and_(*conditions))
        .order_by(disputes.c.opened_idx)
        .limit(MAX_QUEUE_PAGE)
    )
    async with request.app[DB].reading() as conn:
        rows = (await conn.execute(query)).all()
    return json_response({"disputes": [_dispute_out(r) for r in rows]})


async def get_dispute(request: web.Request) -> web.Response:
    principal = principal_of(request)
    did = request.match_info["dispute_id"]
    async with request.app[DB].reading() as conn:
        row = (
            await conn.execute(
                select(disputes, records.c.contributors)
                .join(records, records.c.id == disputes.c.record_id)
                .where(disputes.c.id == did)
            )
        ).first()
    party = row is not None and (
        row.opened_by == principal.org_id or principal.org_id in orjson.loads(row.contributors)
    )
    if row is None or not (party or principal.roles & set(OVERSEERS)):
        raise HashfedError(Problem.NOT_FOUND, f"no dispute {did} visible to {principal.org_id!r}")
    return json_response(_dispute_out(row))


async def post_dispute(request: web.Request) -> web.Response:
    outcome = await accept_statement(
        request, (Role.CONSUMER, Role.CONTRIBUTOR), frozenset({StatementType.DISPUTE_OPEN})
    )
    return json_response(
        outcome.result, 200 if outcome.replayed else 201, replayed=outcome.replayed
    )


async def post_resolution(request: web.Request) -> web.Response:
    did = request.match_info["dispute_id"]

    def same_dispute(statement: Any) -> None:
        if statement.payload.get("dispute") != did:
            raise HashfedError(Problem.STATEMENT_MALFORMED, f"statement dispute must be {did}")

    principal = _authorised(request, (Role.ADMIN,))
    outcome = await request.app[INTAKE].accept(
        principal, await read_envelope(request), {StatementType.DISPUTE_RESOLVE},
        check=same_dispute,
    )  # fmt: skip
    return json_response(outcome.result, replayed=outcome.replayed)


def _inbox_cursor(idx: int, seq: int) -> str:
    return f"{idx}.{seq}"


async def get_inbox(request: web.Request) -> web.Response:
    principal = principal_of(request)
    after = request.query.get("after")
    limit = min(int_query(request, "limit", 100), MAX_QUEUE_PAGE)
    conditions = [notifications.c.org_id == principal.org_id]
    if after:
        idx, _, seq = after.partition(".")
        if not (idx.isdigit() and seq.isdigit()):
            raise HashfedError(Problem.MALFORMED_REQUEST, "'after' is a cursor from the inbox")
        conditions.append(
            tuple_(notifications.c.idx, notifications.c.seq) > tuple_(int(idx), int(seq))
        )
    async with request.app[DB].reading() as conn:
        rows = (
            await conn.execute(
                select(notifications)
                .where(and_(*conditions))
                .order_by(notifications.c.idx, notifications.c.seq)
                .limit(limit)
            )
        ).all()
    items = [
        {
            "cursor": _inbox_cursor(r.idx, r.seq),
            "index": r.idx,
            "kind": r.kind,
            "record": r.record_id,
            "dispute": r.dispute_id,
            "detail": orjson.loads(r.detail),
        }
        for r in rows
    ]
    return json_response({"items": items, "next_cursor": items[-1]["cursor"] if items else after})


ADMIN = (Role.ADMIN,)
GOVERNANCE_ROUTES: tuple[Route, ...] = (
    Route("GET", "/v1/policy", get_policy, "The policy in force", tuple(Role),
          response=PolicyOut, tags=("governance",)),
    Route("POST", "/v1/policy", post_policy, "Set a new policy version (policy.set)", ADMIN,
          request=m.Envelope, response=m.GovernanceResult, tags=("governance",)),
    Route("GET", "/v1/reviews", get_reviews, "The review queue, oldest first", OVERSEERS,
          response=ReviewQueue, query=ReviewQuery, tags=("review",)),
    Route("POST", "/v1/reviews", post_reviews,
          "Signed review decisions (approve, reject, request_changes) on a batch of records",
          ADMIN, request=m.Envelope, response=m.StatementResult, tags=("review",)),
    Route("POST", "/v1/opinions", post_opinions,
          "Signed opinions (seen, agree, disagree_labels, false_positive) on approved records",
          (Role.CONSUMER,), request=m.Envelope, response=m.StatementResult, tags=("review",)),
    Route("GET", "/v1/disputes", get_disputes, "Disputes (all for overseers; own for parties)",
          tuple(Role), response=DisputeList, tags=("disputes",)),
    Route("POST", "/v1/disputes", post_dispute, "Open a dispute on an approved record",
          (Role.CONSUMER, Role.CONTRIBUTOR), request=m.Envelope, response=m.StatementResult,
          status=201, tags=("disputes",)),
    Route("GET", "/v1/disputes/{dispute_id}", get_dispute, "One dispute and its votes",
          tuple(Role), response=DisputeOut, tags=("disputes",), path_params=("dispute_id",)),
    Route("POST", "/v1/disputes/{dispute_id}/resolve", post_resolution,
          "Vote to uphold or retract (admins of uninvolved organisations)", ADMIN,
          request=m.Envelope, response=m.StatementResult, tags=("disputes",),
          path_params=("dispute_id",)),
    Route("GET", "/v1/inbox", get_inbox, "What happened to this organisation's records",
          tuple(Role), response=Inbox, tags=("inbox",)),
)  # fmt: skip
