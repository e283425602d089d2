"""Organisations and keys: lookups for authentication, and the statements that change them."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from sqlalchemy import bindparam, insert, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from federation.identities.model import (
    KEY_RETIRED,
    KEY_REVOKED,
    ORG_ACTIVE,
    Identities,
    KeyState,
    OrgState,
)
from federation.log.append import LogBatch
from federation.protocol.keys import decode_public_key, key_id
from federation.protocol.problems import HashfedError, Problem
from federation.protocol.statements import (
    Role,
    SignedStatement,
    StatementType,
)
from federation.store.schema import keys, log_head, orgs


@dataclass(frozen=True, slots=True)
class KeyInfo:
    """A registered key with its organisation's standing, as authentication needs it."""

    key_id: str
    org_id: str
    public_key: Ed25519PublicKey
    status: str
    org_status: str
    roles: frozenset[str]


@dataclass(frozen=True, slots=True)
class Principal:
    """Who signed a request."""

    org_id: str
    key_id: str
    roles: frozenset[str]

    def require(self, *any_of: Role) -> None:
        """Refuse unless the organisation holds at least one of ``any_of``."""
        if not self.roles.intersection(any_of):
            wanted = " or ".join(r.value for r in any_of)
            raise HashfedError(
                Problem.FORBIDDEN_ROLE,
                f"organisation {self.org_id!r} lacks the role {wanted} needed here",
            )


def parse_roles(text: str) -> frozenset[str]:
    return frozenset(r for r in text.split(",") if r)


KEY = (
    select(
        keys.c.id,
        keys.c.org_id,
        keys.c.public_key,
        keys.c.status,
        orgs.c.status.label("org_status"),
        orgs.c.roles,
    )
    .join(orgs, orgs.c.id == keys.c.org_id)
    .where(keys.c.id == bindparam("kid"))
)


def key_info(row: Sequence[Any] | None) -> KeyInfo | None:
    """A :data:`KEY` row as a :class:`KeyInfo`."""
    if row is None:
        return None
    kid, org_id, public_key, status, org_status, roles = row
    return KeyInfo(
        key_id=kid,
        org_id=org_id,
        public_key=Ed25519PublicKey.from_public_bytes(bytes(public_key)),
        status=status,
        org_status=org_status,
        roles=parse_roles(roles),
    )


async def load_key(conn: AsyncConnection, kid: str) -> KeyInfo | None:
    return key_info((await conn.execute(KEY, {"kid": kid})).first())


def check_key_usable(info: KeyInfo | None, kid: str) -> KeyInfo:
    """Refuse unknown, revoked or retired keys and suspended organisations."""
    if info is None:
        raise HashfedError(Problem.UNKNOWN_KEY, f"key {kid} is not registered with this federation")
    if info.status == KEY_REVOKED:
        raise HashfedError(Problem.KEY_REVOKED, f"key {kid} was revoked; sign with a current key")
    if info.status == KEY_RETIRED:
        raise HashfedError(Problem.KEY_RETIRED, f"key {kid} was retired; sign with a current key")
    if info.org_status != ORG_ACTIVE:
        raise HashfedError(Problem.ORG_SUSPENDED, f"organisation {info.org_id!r} is suspended")
    return info


async def _touched(conn: AsyncConnection, statement: SignedStatement) -> Identities:
    """The organisation and keys an identity statement can touch, as a partial model."""
    payload = statement.payload
    subject = payload.get("subject")
    key_ids = {k for k in (payload.get("key_id"),) if isinstance(k, str)}
    public = payload.get("public_key")
    if isinstance(public, str):
        with contextlib.suppress(HashfedError):
            key_ids.add(key_id(decode_public_key(public)))
    model = Identities()
    if isinstance(subject, str):
        for row in await conn.execute(select(orgs).where(orgs.c.id == subject)):
            model.orgs[row.id] = OrgState(
                row.id, row.name, row.status, parse_roles(row.roles), row.admitted_idx,
                row.updated_idx,
            )  # fmt: skip
    wanted = or_(keys.c.org_id == subject, keys.c.id.in_(key_ids)) if key_ids else (
        keys.c.org_id == subject
    )  # fmt: skip
    for row in await conn.execute(select(keys).where(wanted)):
        model.keys[row.id] = KeyState(
            row.id, row.org_id, bytes(row.public_key), row.status, row.added_idx,
            row.retired_idx, row.revoked_idx, row.revoked_at,
        )  # fmt: skip
    return model


async def apply_governance(
    conn: AsyncConnection, batch: LogBatch, statement: SignedStatement
) -> dict[str, Any]:
    """Check and apply one identity statement inside an append transaction.

    The pure model decides (and refuses before the statement's leaf is added,
    so a refusal leaves no trace); this function only loads and persists.
    """
    model = await _touched(conn, statement)
    known_orgs, known_keys = set(model.orgs), set(model.keys)
    result = model.apply(statement, batch.next_idx, int(time.time()))
    batch.add_statement(statement)
    for org in model.written_orgs:
        values = {
            "name": org.name, "status": org.status, "roles": ",".join(sorted(org.roles)),
            "admitted_idx": org.admitted_idx, "updated_idx": org.updated_idx,
        }  # fmt: skip
        if org.id in known_orgs:
            await conn.execute(update(orgs).where(orgs.c.id == org.id).values(**values))
        else:
            await conn.execute(insert(orgs).values(id=org.id, **values))
    for key in model.written_keys:
        values = {
            "org_id": key.org, "public_key": key.public_key, "status": key.status,
            "added_idx": key.added_idx, "retired_idx": key.retired_idx,
            "revoked_idx": key.revoked_idx, "revoked_at": key.revoked_at,
        }  # fmt: skip
        if key.id in known_keys:
            await conn.execute(update(keys).where(keys.c.id == key.id).values(**values))
        else:
            await conn.execute(insert(keys).values(id=key.id, **values))
    if model.written_orgs or model.written_keys:
        # Cached key lookups (federation/identities/cache.py) die with this
        # commit, in every worker: requests read the counter with the log size.
        await conn.execute(
            update(log_head).where(log_head.c.id == 1).values(identities=log_head.c.identities + 1)
        )
    return result


async def apply_genesis(conn: AsyncConnection, batch: LogBatch, statement: SignedStatement) -> None:
    """Found the federation: the governance organisation and its first key, self-signed."""
    if statement.type != StatementType.GENESIS:
        raise HashfedError(Problem.STATEMENT_WRONG_TYPE, "the first statement must be a genesis")
    await apply_governance(conn, batch, statement)


async def list_orgs(conn: AsyncConnection) -> list[dict[str, Any]]:
    org_rows = (await conn.execute(select(orgs).order_by(orgs.c.id))).all()
    key_rows = (await conn.execute(select(keys).order_by(keys.c.added_idx))).all()
    by_org: dict[str, list[dict[str, Any]]] = {}
    for k in key_rows:
        by_org.setdefault(k.org_id, []).append(
            {
                "key_id": k.id,
                "status": k.status,
                "added_index": k.added_idx,
                "retired_index": k.retired_idx,
                "revoked_index": k.revoked_idx,
                "revoked_at": k.revoked_at,
            }
        )
    return [
        {
            "id": o.id,
            "name": o.name,
            "status": o.status,
            "roles": sorted(parse_roles(o.roles)),
            "admitted_index": o.admitted_idx,
            "keys": by_org.get(o.id, []),
        }
        for o in org_rows
    ]
