"""Organisations and keys as a pure model: the server applies it, an auditor replays it."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from federation.protocol.keys import decode_public_key, key_id, raw_public_key
from federation.protocol.problems import HashfedError, Problem
from federation.protocol.statements import (
    KEY_ID_PATTERN,
    ORG_ID_PATTERN,
    Role,
    SignedStatement,
    StatementType,
)

ORG_ACTIVE = "active"
ORG_SUSPENDED = "suspended"
KEY_ACTIVE = "active"
KEY_RETIRED = "retired"
KEY_REVOKED = "revoked"
ROLE_VALUES = tuple(r.value for r in Role)


@dataclass(frozen=True)
class OrgState:
    id: str
    name: str
    status: str
    roles: frozenset[str]
    admitted_idx: int
    updated_idx: int


@dataclass(frozen=True)
class KeyState:
    id: str
    org: str
    public_key: bytes  # 32 raw bytes
    status: str
    added_idx: int
    retired_idx: int | None = None
    revoked_idx: int | None = None
    revoked_at: int | None = None


# Statement payloads (strict; unknown members refused).


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


PAYLOADS: dict[str, type[_Payload]] = {
    StatementType.GENESIS: GenesisPayload,
    StatementType.ORG_ADMIT: OrgAdmitPayload,
    StatementType.ORG_SUSPEND: OrgStatusPayload,
    StatementType.ORG_REINSTATE: OrgStatusPayload,
    StatementType.KEY_ADD: KeyAddPayload,
    StatementType.KEY_RETIRE: KeyStatusPayload,
    StatementType.KEY_REVOKE: KeyStatusPayload,
}


def parse_payload(statement: SignedStatement) -> _Payload:
    model = PAYLOADS.get(statement.type)
    if model is None:
        raise HashfedError(
            Problem.STATEMENT_WRONG_TYPE, f"{statement.type} is not an identity statement"
        )
    try:
        return model.model_validate(statement.payload)
    except ValidationError as exc:
        errors = [
            {"pointer": "/" + "/".join(str(p) for p in e["loc"]), "detail": e["msg"]}
            for e in exc.errors()
        ]
        first = errors[0]
        raise HashfedError(
            Problem.STATEMENT_MALFORMED,
            f"{statement.type} statement is invalid: {first['pointer']}: {first['detail']}",
            errors=errors,
        ) from exc


def normalise_roles(roles: list[str]) -> frozenset[str]:
    unknown = sorted(set(roles) - set(ROLE_VALUES))
    if unknown:
        raise HashfedError(
            Problem.STATEMENT_MALFORMED,
            f"unknown role(s) {', '.join(unknown)}; roles are {', '.join(ROLE_VALUES)}",
        )
    return frozenset(roles)


@dataclass
class Identities:
    """The organisations and keys known so far (all of them, or those a statement touches)."""

    orgs: dict[str, OrgState] = field(default_factory=dict)
    keys: dict[str, KeyState] = field(default_factory=dict)
    # What the last apply() wrote, for the server to persist.
    written_orgs: list[OrgState] = field(default_factory=list)
    written_keys: list[KeyState] = field(default_factory=list)

    def _org(self, org_id: str) -> OrgState:
        org = self.orgs.get(org_id)
        if org is None:
            raise HashfedError(Problem.NOT_FOUND, f"organisation {org_id!r} does not exist")
        return org

    def _put_org(self, org: OrgState) -> None:
        self.orgs[org.id] = org
        self.written_orgs.append(org)

    def _put_key(self, key: KeyState) -> None:
        self.keys[key.id] = key
        self.written_keys.append(key)

    def _new_key(self, org_id: str, public_key_b64: str, idx: int) -> KeyState:
        public_key = decode_public_key(public_key_b64)
        kid = key_id(public_key)
        if kid in self.keys:
            raise HashfedError(Problem.CONFLICT, f"key {kid} is already registered")
        return KeyState(kid, org_id, raw_public_key(public_key), KEY_ACTIVE, idx)

    def apply(self, statement: SignedStatement, idx: int, now: int) -> dict[str, Any]:
        """Apply an identity statement that lands at log index ``idx``; returns its result.

        Refusals raise ``HashfedError`` before anything changes.
        """
        self.written_orgs, self.written_keys = [], []
        payload = parse_payload(statement)
        if isinstance(payload, GenesisPayload):
            if idx != 0:
                raise HashfedError(Problem.CONFLICT, "the federation is already founded")
            key = self._new_key(payload.subject, payload.public_key, idx)
            if key.id != statement.key_id or payload.subject != statement.org:
                raise HashfedError(
                    Problem.STATEMENT_MALFORMED, "genesis must be signed by its own key"
                )
            roles = normalise_roles(payload.roles)
            self._put_org(OrgState(payload.subject, payload.name, ORG_ACTIVE, roles, idx, idx))
            self._put_key(key)
            return {"org": payload.subject, "key_id": key.id}
        if isinstance(payload, OrgAdmitPayload):
            roles = normalise_roles(payload.roles)
            if payload.subject in self.orgs:
                raise HashfedError(
                    Problem.CONFLICT, f"organisation {payload.subject!r} already exists"
                )
            key = self._new_key(payload.subject, payload.public_key, idx)
            self._put_org(OrgState(payload.subject, payload.name, ORG_ACTIVE, roles, idx, idx))
            self._put_key(key)
            return {"org": payload.subject, "key_id": key.id, "roles": sorted(roles)}
        if isinstance(payload, OrgStatusPayload):
            org = self._org(payload.subject)
            if payload.subject == statement.org:
                raise HashfedError(
                    Problem.CONFLICT, "an organisation cannot suspend or reinstate itself"
                )
            status = ORG_SUSPENDED if statement.type == StatementType.ORG_SUSPEND else ORG_ACTIVE
            if org.status == status:
                raise HashfedError(Problem.CONFLICT, f"organisation {org.id!r} is already {status}")
            self._put_org(replace(org, status=status, updated_idx=idx))
            return {"org": org.id, "status": status}
        if isinstance(payload, KeyAddPayload):
            self._org(payload.subject)
            key = self._new_key(payload.subject, payload.public_key, idx)
            self._put_key(key)
            return {"org": payload.subject, "key_id": key.id, "status": KEY_ACTIVE}
        assert isinstance(payload, KeyStatusPayload)
        found = self.keys.get(payload.key_id)
        if found is None or found.org != payload.subject:
            raise HashfedError(
                Problem.NOT_FOUND, f"key {payload.key_id} is not a key of {payload.subject!r}"
            )
        key = found
        if statement.type == StatementType.KEY_RETIRE:
            if key.status != KEY_ACTIVE:
                raise HashfedError(Problem.CONFLICT, f"key {key.id} is {key.status}")
            if key.id == statement.key_id:
                raise HashfedError(
                    Problem.CONFLICT, "a key cannot retire itself; sign with another"
                )
            changed = replace(key, status=KEY_RETIRED, retired_idx=idx)
        else:
            if key.status == KEY_REVOKED:
                raise HashfedError(Problem.CONFLICT, f"key {key.id} is already revoked")
            changed = replace(key, status=KEY_REVOKED, revoked_idx=idx, revoked_at=now)
        self._put_key(changed)
        return {"org": payload.subject, "key_id": key.id, "status": changed.status}

    def check_signer(self, statement: SignedStatement) -> KeyState:
        """The signing key, if it may sign at this point of the log (active key, active org)."""
        key = self.keys.get(statement.key_id)
        if key is None:
            raise HashfedError(Problem.UNKNOWN_KEY, f"key {statement.key_id} was never registered")
        if key.status == KEY_REVOKED:
            raise HashfedError(
                Problem.KEY_REVOKED, f"key {key.id} was revoked at leaf {key.revoked_idx}"
            )
        if key.status == KEY_RETIRED:
            raise HashfedError(
                Problem.KEY_RETIRED, f"key {key.id} was retired at leaf {key.retired_idx}"
            )
        if key.org != statement.org:
            raise HashfedError(
                Problem.STATEMENT_KEY_MISMATCH,
                f"key {key.id} belongs to {key.org!r}, not {statement.org!r}",
            )
        if self.orgs[key.org].status != ORG_ACTIVE:
            raise HashfedError(Problem.ORG_SUSPENDED, f"organisation {key.org!r} is suspended")
        return key
