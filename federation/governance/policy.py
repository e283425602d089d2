"""The federation's policy document: versioned, set only by signed admin statements."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncConnection

from federation.governance.rules import Policy
from federation.log.append import LogBatch
from federation.protocol.problems import HashfedError, Problem
from federation.protocol.statements import ORG_ID_PATTERN, SignedStatement
from federation.protocol.taxonomy import DEFAULT_TAXONOMY, Taxonomy
from federation.store.schema import policies

MAX_APPROVALS = 10


class PolicyDocument(BaseModel):
    """What a ``policy.set`` statement carries (and ``GET /v1/policy`` returns)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    approvals_required: int = Field(1, ge=1, le=MAX_APPROVALS)
    submitter_admin_may_approve: bool = False
    trusted_contributors: list[str] = Field(default_factory=list, max_length=1000)
    dispute_quorum: int = Field(1, ge=1, le=MAX_APPROVALS)
    auto_approve: bool = False
    taxonomy: dict[str, str] = Field(default_factory=lambda: dict(DEFAULT_TAXONOMY.labels))

    def rules(self) -> Policy:
        return Policy(
            approvals_required=self.approvals_required,
            submitter_admin_may_approve=self.submitter_admin_may_approve,
            trusted_contributors=frozenset(self.trusted_contributors),
            dispute_quorum=self.dispute_quorum,
            auto_approve=self.auto_approve,
        )


class PolicySetPayload(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    type: str
    org: str
    key: str
    created: int
    v: int
    nonce: str | None = None
    version: int = Field(ge=1, description="Must be the current version + 1")
    policy: PolicyDocument


@dataclass(frozen=True)
class PolicyInForce:
    version: int
    document: PolicyDocument
    rules: Policy
    taxonomy: Taxonomy


def policy_from_document(version: int, document: PolicyDocument) -> PolicyInForce:
    try:
        taxonomy = Taxonomy(document.taxonomy)
    except ValueError as exc:
        raise HashfedError(Problem.STATEMENT_MALFORMED, f"taxonomy is invalid: {exc}") from exc
    return PolicyInForce(version, document, document.rules(), taxonomy)


# Before the first policy.set (only while founding) the defaults hold.
DEFAULT_POLICY = policy_from_document(0, PolicyDocument())


async def current_policy(conn: AsyncConnection) -> PolicyInForce:
    """The policy in force: the newest version, or the defaults before the first."""
    row = (
        await conn.execute(
            select(policies.c.version, policies.c.document)
            .order_by(policies.c.version.desc())
            .limit(1)
        )
    ).first()
    if row is None:
        return DEFAULT_POLICY
    return policy_from_document(int(row.version), PolicyDocument.model_validate_json(row.document))


def parse_policy_set(statement: SignedStatement) -> PolicySetPayload:
    try:
        payload = PolicySetPayload.model_validate(statement.payload)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        raise HashfedError(
            Problem.STATEMENT_MALFORMED, f"policy.set is invalid: {where}: {err['msg']}"
        ) from exc
    bad = [o for o in payload.policy.trusted_contributors if not re.match(ORG_ID_PATTERN, o)]
    if bad:
        raise HashfedError(Problem.STATEMENT_MALFORMED, f"not organisation ids: {bad[:5]}")
    policy_from_document(payload.version, payload.policy)  # validates the taxonomy
    return payload


async def apply_policy_set(
    conn: AsyncConnection, batch: LogBatch, statement: SignedStatement
) -> dict[str, Any]:
    """Store a new policy version (optimistic: the statement names the version it creates)."""
    payload = parse_policy_set(statement)
    current = await current_policy(conn)
    if payload.version != current.version + 1:
        raise HashfedError(
            Problem.CONFLICT,
            f"policy is at version {current.version}; a policy.set must create version "
            f"{current.version + 1} (fetch GET /v1/policy and try again)",
        )
    idx = batch.add_statement(statement)
    await conn.execute(
        insert(policies).values(
            version=payload.version,
            document=orjson.dumps(payload.policy.model_dump()).decode(),
            statement_id=statement.id,
            leaf_idx=idx,
        )
    )
    return {"statement_id": statement.id, "type": statement.type, "version": payload.version}
