"""The one path every signed statement takes into the federation.

open the envelope → check signer against the requester → verify the signature
→ answer a repeat with the first result → apply it under the append lock,
storing the statement, its leaves and its result in one transaction.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import Any

import orjson
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from federation.governance.policy import PolicyInForce, apply_policy_set, current_policy
from federation.governance.rules import check_may_sign
from federation.identities.service import (
    Principal,
    apply_genesis,
    apply_governance,
    check_key_usable,
    load_key,
)
from federation.log.append import LogBatch
from federation.log.checkpoints import CheckpointSigner
from federation.log.feed import log_size
from federation.protocol.keys import decode_public_key
from federation.protocol.problems import HashfedError, Problem
from federation.protocol.statements import (
    Envelope,
    SignedStatement,
    StatementType,
    check_statement_time,
    open_envelope,
    verify_statement,
)
from federation.records.checking import ItemChecker
from federation.records.ingest import (
    Draft,
    apply_record_statement,
    draft_record_statement,
    prepare,
    touched_since,
)
from federation.store.bulk import Inserts
from federation.store.db import Database
from federation.store.schema import statements

GOVERNANCE_TYPES = frozenset(
    {
        StatementType.ORG_ADMIT,
        StatementType.ORG_SUSPEND,
        StatementType.ORG_REINSTATE,
        StatementType.KEY_ADD,
        StatementType.KEY_RETIRE,
        StatementType.KEY_REVOKE,
    }
)


@dataclass(frozen=True, slots=True)
class Outcome:
    """The result of a statement, and whether it is the replay of an earlier one."""

    result: dict[str, Any]
    replayed: bool


STATEMENT_COLUMNS = ("id", "type", "org_id", "key_id", "leaf_idx", "received_at", "result")

RECORD_TYPES = frozenset(
    {
        StatementType.SUBMISSIONS,
        StatementType.WITHDRAWALS,
        StatementType.REVIEWS,
        StatementType.OPINIONS,
        StatementType.DISPUTE_OPEN,
        StatementType.DISPUTE_RESOLVE,
    }
)


@dataclass
class Intake:
    db: Database
    signer: CheckpointSigner
    # Checks record statements' items; big ones in a helper process (see checking.py).
    checker: ItemChecker = field(default_factory=lambda: ItemChecker(processes=0))

    async def _stored_result(self, conn: AsyncConnection, sid: str) -> dict[str, Any] | None:
        row = (
            await conn.execute(select(statements.c.result).where(statements.c.id == sid))
        ).first()
        return None if row is None else dict(orjson.loads(row.result))

    async def accept(
        self,
        principal: Principal,
        envelope: Envelope,
        allowed_types: Collection[str],
        *,
        check: Callable[[SignedStatement], None] | None = None,
    ) -> Outcome:
        """Accept one statement sent by ``principal``; raises ``HashfedError`` on refusal."""
        statement = open_envelope(envelope)
        if statement.type not in allowed_types:
            raise HashfedError(
                Problem.STATEMENT_WRONG_TYPE,
                f"a {statement.type} statement cannot be sent here; "
                f"expected {' or '.join(sorted(allowed_types))}",
            )
        if statement.org != principal.org_id:
            raise HashfedError(
                Problem.STATEMENT_KEY_MISMATCH,
                f"statement names organisation {statement.org!r} but the request is from "
                f"{principal.org_id!r}",
            )
        check_may_sign(statement.type, principal.roles)
        if check is not None:
            check(statement)
        async with self.db.reading() as conn:
            stored = await self._stored_result(conn, statement.id)
            if stored is not None:
                return Outcome(stored, replayed=True)
            key = check_key_usable(await load_key(conn, statement.key_id), statement.key_id)
            policy = await current_policy(conn)
        if key.org_id != statement.org:
            raise HashfedError(
                Problem.STATEMENT_KEY_MISMATCH,
                f"key {statement.key_id} does not belong to {statement.org!r}",
            )
        verify_statement(statement, key.public_key)
        check_statement_time(statement)
        is_record = statement.type in RECORD_TYPES
        prepared, draft = None, None
        if is_record:
            draft = await self._draft_as_new(statement, principal, policy)
            if draft is None:
                prepared = await self.checker.prepare(statement, policy.taxonomy)
                draft = await draft_record_statement(
                    self.db, statement, principal, prepared, policy
                )

        async with self.db.appending() as (conn, size), Inserts(conn) as inserts:
            stored = await self._stored_result(conn, statement.id)
            if stored is not None:
                return Outcome(stored, replayed=True)
            # The key may have been revoked while we verified: decide in log order.
            check_key_usable(await load_key(conn, statement.key_id), statement.key_id)
            batch = LogBatch(start=size)
            await batch.begin(conn)
            if is_record:
                in_force = await current_policy(conn)
                if in_force.version != policy.version:  # the taxonomy may have changed
                    prepared, draft = prepare(statement, in_force.taxonomy), None
                result = await apply_record_statement(
                    conn, batch, inserts, statement, principal, prepared, in_force, draft
                )
            elif statement.type == StatementType.POLICY_SET:
                result = await apply_policy_set(conn, batch, statement)
            elif statement.type in GOVERNANCE_TYPES:
                detail = await apply_governance(conn, batch, statement)
                result = {"statement_id": statement.id, "type": statement.type, **detail}
            else:
                raise HashfedError(
                    Problem.STATEMENT_WRONG_TYPE, f"{statement.type} is not accepted here"
                )
            if batch.rows:
                result["leaf_index"] = batch.start
                await _store_statement(conn, batch, inserts, statement, result, self.signer)
        return Outcome(result, replayed=False)

    async def _draft_as_new(
        self, statement: SignedStatement, principal: Principal, policy: PolicyInForce
    ) -> Draft | None:
        """A big submissions statement that names no record held yet, drafted in a helper.

        None if it does not apply (see :meth:`ItemChecker.new_ids`) or a record
        is held already: the statement is then drafted here, as any other.
        """
        ids = await self.checker.new_ids(statement, policy.taxonomy)
        if ids is None:
            return None
        async with self.db.reading() as conn:
            size = await log_size(conn)  # first: a record created after it fails the draft
            if await touched_since(conn, 0, ids):  # any of them held at all
                return None
        drafted = await self.checker.draft_new(statement, principal, policy)
        return None if drafted is None else drafted.adopt(statement, size, ids, policy)


async def _store_statement(
    conn: AsyncConnection,
    batch: LogBatch,
    inserts: Inserts,
    statement: SignedStatement,
    result: dict[str, Any],
    signer: CheckpointSigner,
) -> None:
    """Write the statement row (with the result a repeat will get) and its leaves."""
    row = (
        statement.id,
        statement.type,
        statement.org,
        statement.key_id,
        batch.start,
        int(time.time()),
        orjson.dumps(result),
    )
    await inserts.add(statements, STATEMENT_COLUMNS, [row])
    await batch.flush(conn, signer, inserts)


async def found_federation(
    db: Database, genesis: SignedStatement, policy: SignedStatement, signer: CheckpointSigner
) -> None:
    """Append the self-signed genesis statement and the first policy; the log must be empty."""
    verify_statement(genesis, decode_public_key(str(genesis.payload["public_key"])))
    async with db.appending() as (conn, size), Inserts(conn) as inserts:
        batch = LogBatch(start=size)
        await batch.begin(conn)
        await apply_genesis(conn, batch, genesis)
        result = {"statement_id": genesis.id, "type": genesis.type, "leaf_index": batch.start}
        await _store_statement(conn, batch, inserts, genesis, result, signer)
    intake = Intake(db, signer)
    governance = Principal(genesis.org, genesis.key_id, frozenset({"admin"}))
    await intake.accept(governance, policy.envelope(), {StatementType.POLICY_SET})
