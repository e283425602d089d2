"""Organisations and keys: lookups for authentication, and the statements that change them."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sqlalchemy import insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from federation.log.append import LogBatch
from federation.protocol.keys import decode_public_key, key_id, raw_public_key
from federation.protocol.problems import HashfedError, Problem
from federation.protocol.statements import (
    KEY_ID_PATTERN,
    ORG_ID_PATTERN,
    Role,
    SignedStatement,
    StatementType,
)
from federation.store.schema import keys, orgs

ORG_ACTIVE = "active"
ORG_SUSPENDED = "suspended"
KEY_ACTIVE = "active"
KEY_RETIRED = "retired"
KEY_REVOKED = "revoked"


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


async def load_key(conn: AsyncConnection, kid: str) -> KeyInfo | None:
    row = (
        await conn.execute(
            select(
                keys.c.id,
                keys.c.org_id,
                keys.c.public_key,
                keys.c.status,
                orgs.c.status.label("org_status"),
                orgs.c.roles,
            )
            .join(orgs, orgs.c.id == keys.c.org_id)
            .where(keys.c.id == kid)
        )
    ).first()
    if row is None:
        return None
    return KeyInfo(
        key_id=row.id,
        org_id=row.org_id,
        public_key=Ed25519PublicKey.from_public_bytes(row.public_key),
        status=row.status,
        org_status=row.org_status,
        roles=parse_roles(row.roles),
    )


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


# Statement payloads (pydantic at the edge; strict, unknown members refused).

_ROLE_VALUES = tuple(r.value for r in Role)


class _Payload(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    type: str
    org: str
    key: str
    created: int
    v: int
    nonce: str | None = None


class GenesisPayload(_Payload):
    subject: str = Field(pattern=ORG_ID_PATTERN)
    name: str = Field(min_length=1, max_length=200)
    roles: list[str]
    public_key: str
    origin: str = Field(min_length=1, max_length=200)
    log_public_key: str


class OrgAdmitPayload(_Payload):
    subject: str = Field(pattern=ORG_ID_PATTERN)
    name: str = Field(min_length=1, max_length=200)
    roles: list[str] = Field(min_length=1, max_length=4)
    public_key: str


class OrgStatusPayload(_Payload):
    subject: str = Field(pattern=ORG_ID_PATTERN)
    note: str = Field("", max_length=2000)


class KeyAddPayload(_Payload):
    subject: str = Field(pattern=ORG_ID_PATTERN)
    public_key: str


class KeyStatusPayload(_Payload):
    subject: str = Field(pattern=ORG_ID_PATTERN)
    key_id: str = Field(pattern=KEY_ID_PATTERN)
    note: str = Field("", max_length=2000)


GOVERNANCE_PAYLOADS: dict[str, type[_Payload]] = {
    StatementType.GENESIS: GenesisPayload,
    StatementType.ORG_ADMIT: OrgAdmitPayload,
    StatementType.ORG_SUSPEND: OrgStatusPayload,
    StatementType.ORG_REINSTATE: OrgStatusPayload,
    StatementType.KEY_ADD: KeyAddPayload,
    StatementType.KEY_RETIRE: KeyStatusPayload,
    StatementType.KEY_REVOKE: KeyStatusPayload,
}


def parse_payload(statement: SignedStatement) -> _Payload:
    model = GOVERNANCE_PAYLOADS.get(statement.type)
    if model is None:
        raise HashfedError(
            Problem.STATEMENT_WRONG_TYPE, f"{statement.type} is not a governance statement"
        )
    try:
        return model.model_validate(statement.payload)
    except ValidationError as exc:
        raise HashfedError(
            Problem.STATEMENT_MALFORMED,
            f"{statement.type} statement is invalid: {_first_error(exc)}",
            errors=_errors(exc),
        ) from exc


def _first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err["loc"]) or "statement"
    return f"{where}: {err['msg']}"


def _errors(exc: ValidationError) -> list[dict[str, str]]:
    return [
        {"pointer": "/" + "/".join(str(p) for p in e["loc"]), "detail": e["msg"]}
        for e in exc.errors()
    ]


def _normalise_roles(roles: list[str]) -> str:
    unknown = sorted(set(roles) - set(_ROLE_VALUES))
    if unknown:
        raise HashfedError(
            Problem.STATEMENT_MALFORMED,
            f"unknown role(s) {', '.join(unknown)}; roles are {', '.join(_ROLE_VALUES)}",
        )
    return ",".join(sorted(set(roles)))


async def _org_row(conn: AsyncConnection, org_id: str) -> Any:
    return (await conn.execute(select(orgs).where(orgs.c.id == org_id))).first()


async def _require_org(conn: AsyncConnection, org_id: str) -> Any:
    row = await _org_row(conn, org_id)
    if row is None:
        raise HashfedError(Problem.NOT_FOUND, f"organisation {org_id!r} does not exist")
    return row


async def _insert_key(conn: AsyncConnection, org_id: str, public_key_b64: str, idx: int) -> str:
    public_key = decode_public_key(public_key_b64)
    kid = key_id(public_key)
    if (await conn.execute(select(keys.c.id).where(keys.c.id == kid))).first() is not None:
        raise HashfedError(Problem.CONFLICT, f"key {kid} is already registered")
    await conn.execute(
        insert(keys).values(
            id=kid,
            org_id=org_id,
            public_key=raw_public_key(public_key),
            status=KEY_ACTIVE,
            added_idx=idx,
        )
    )
    return kid


async def apply_governance(
    conn: AsyncConnection, batch: LogBatch, statement: SignedStatement
) -> dict[str, Any]:
    """Check and apply one governance statement inside an append transaction.

    The caller has verified the signature and that the signer is an admin.
    Validation happens before the statement's leaf is added, so a refused
    statement leaves no trace.
    """
    payload = parse_payload(statement)
    stype = statement.type
    now = int(time.time())
    if isinstance(payload, OrgAdmitPayload):
        roles = _normalise_roles(payload.roles)
        if await _org_row(conn, payload.subject) is not None:
            raise HashfedError(Problem.CONFLICT, f"organisation {payload.subject!r} already exists")
        decode_public_key(payload.public_key)
        idx = batch.add_statement(statement)
        await conn.execute(
            insert(orgs).values(
                id=payload.subject,
                name=payload.name,
                status=ORG_ACTIVE,
                roles=roles,
                admitted_idx=idx,
                updated_idx=idx,
            )
        )
        kid = await _insert_key(conn, payload.subject, payload.public_key, idx)
        return {"org": payload.subject, "key_id": kid, "roles": roles.split(",")}
    if isinstance(payload, OrgStatusPayload):
        row = await _require_org(conn, payload.subject)
        if payload.subject == statement.org:
            raise HashfedError(
                Problem.CONFLICT, "an organisation cannot suspend or reinstate itself"
            )
        new_status = ORG_SUSPENDED if stype == StatementType.ORG_SUSPEND else ORG_ACTIVE
        if row.status == new_status:
            raise HashfedError(
                Problem.CONFLICT, f"organisation {payload.subject!r} is already {new_status}"
            )
        idx = batch.add_statement(statement)
        await conn.execute(
            update(orgs)
            .where(orgs.c.id == payload.subject)
            .values(status=new_status, updated_idx=idx)
        )
        return {"org": payload.subject, "status": new_status}
    if isinstance(payload, KeyAddPayload):
        await _require_org(conn, payload.subject)
        decode_public_key(payload.public_key)
        idx = batch.add_statement(statement)
        kid = await _insert_key(conn, payload.subject, payload.public_key, idx)
        return {"org": payload.subject, "key_id": kid, "status": KEY_ACTIVE}
    if isinstance(payload, KeyStatusPayload):
        row = (await conn.execute(select(keys).where(keys.c.id == payload.key_id))).first()
        if row is None or row.org_id != payload.subject:
            raise HashfedError(
                Problem.NOT_FOUND, f"key {payload.key_id} is not a key of {payload.subject!r}"
            )
        if stype == StatementType.KEY_RETIRE:
            if row.status != KEY_ACTIVE:
                raise HashfedError(Problem.CONFLICT, f"key {payload.key_id} is {row.status}")
            if payload.key_id == statement.key_id:
                raise HashfedError(
                    Problem.CONFLICT, "a key cannot retire itself; sign with another"
                )
            idx = batch.add_statement(statement)
            values: dict[str, Any] = {"status": KEY_RETIRED, "retired_idx": idx}
        else:
            if row.status == KEY_REVOKED:
                raise HashfedError(Problem.CONFLICT, f"key {payload.key_id} is already revoked")
            idx = batch.add_statement(statement)
            values = {"status": KEY_REVOKED, "revoked_idx": idx, "revoked_at": now}
        await conn.execute(update(keys).where(keys.c.id == payload.key_id).values(**values))
        return {"org": payload.subject, "key_id": payload.key_id, "status": values["status"]}
    raise HashfedError(Problem.STATEMENT_WRONG_TYPE, f"{stype} cannot be sent here")


async def apply_genesis(conn: AsyncConnection, batch: LogBatch, statement: SignedStatement) -> None:
    """Found the federation: the governance organisation and its first key, self-signed."""
    payload = parse_payload(statement)
    assert isinstance(payload, GenesisPayload)
    if batch.start != 0:
        raise HashfedError(Problem.CONFLICT, "the federation is already initialised")
    public_key = decode_public_key(payload.public_key)
    if key_id(public_key) != statement.key_id or payload.subject != statement.org:
        raise HashfedError(Problem.STATEMENT_MALFORMED, "genesis must be signed by its own key")
    idx = batch.add_statement(statement)
    await conn.execute(
        insert(orgs).values(
            id=payload.subject,
            name=payload.name,
            status=ORG_ACTIVE,
            roles=_normalise_roles(payload.roles),
            admitted_idx=idx,
            updated_idx=idx,
        )
    )
    await _insert_key(conn, payload.subject, payload.public_key, idx)


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
