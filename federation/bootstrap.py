"""``hashfed server init``: migrate, then found the federation on first run."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import select

from federation.governance.policy import PolicyDocument
from federation.intake import found_federation
from federation.log.checkpoints import CheckpointSigner
from federation.log.feed import log_size
from federation.protocol.keys import (
    encode_public_key,
    generate_private_key,
    key_id,
    load_private_key,
    write_private_key,
    write_public_key,
)
from federation.protocol.statements import Role, StatementType, sign_statement
from federation.settings import Settings
from federation.store.db import Database
from federation.store.migrate import upgrade_to_head
from federation.store.schema import keys

GOVERNANCE_ROLES = (Role.ADMIN, Role.AUDITOR)


@dataclass(frozen=True)
class InitResult:
    created: bool
    org: str
    key_id: str
    key_path: Path
    public_key: str
    log_key_path: Path
    log_public_key: str


def _load_or_create(path: Path) -> tuple[Ed25519PrivateKey, bool]:
    if path.exists():
        return load_private_key(path), False
    key = generate_private_key()
    write_private_key(path, key)
    write_public_key(path.with_suffix(".pub"), key.public_key())
    return key, True


def init_federation(settings: Settings) -> InitResult:
    """Idempotent: migrates to head; founds the federation only on an empty log."""
    settings.prepare_data_dir()
    upgrade_to_head(settings.resolved_database_url)
    return asyncio.run(_found(settings))


async def _found(settings: Settings) -> InitResult:
    db = Database(settings.resolved_database_url)
    try:
        async with db.reading() as conn:
            size = await log_size(conn)
            gov_keys = (
                await conn.execute(
                    select(keys.c.id).where(keys.c.org_id == settings.governance_org)
                )
            ).all()
        gov_path = settings.governance_key_path()
        log_key, _ = _load_or_create(settings.log_key_path)
        log_public = encode_public_key(log_key.public_key())
        if size > 0:
            if not gov_keys:
                raise RuntimeError(
                    f"the database is initialised but has no organisation "
                    f"{settings.governance_org!r}; check HASHFED_GOVERNANCE_ORG"
                )
            gov_key = load_private_key(gov_path) if gov_path.exists() else None
            kid = key_id(gov_key.public_key()) if gov_key else gov_keys[0].id
            public = encode_public_key(gov_key.public_key()) if gov_key else ""
            return InitResult(
                False,
                settings.governance_org,
                kid,
                gov_path,
                public,
                settings.log_key_path,
                log_public,
            )
        private, _ = _load_or_create(gov_path)
        public_key = private.public_key()
        kid = key_id(public_key)
        genesis = sign_statement(
            {
                "type": StatementType.GENESIS.value,
                "subject": settings.governance_org,
                "name": "Federation governance",
                "roles": [r.value for r in GOVERNANCE_ROLES],
                "public_key": encode_public_key(public_key),
                "origin": settings.origin,
                "log_public_key": log_public,
            },
            private,
            key_id=kid,
            org=settings.governance_org,
        )
        policy = sign_statement(
            {
                "type": StatementType.POLICY_SET.value,
                "version": 1,
                "policy": PolicyDocument(auto_approve=settings.auto_approve).model_dump(),
            },
            private,
            key_id=kid,
            org=settings.governance_org,
        )
        await found_federation(db, genesis, policy, CheckpointSigner(settings.origin, log_key))
        return InitResult(
            True,
            settings.governance_org,
            kid,
            gov_path,
            encode_public_key(public_key),
            settings.log_key_path,
            log_public,
        )
    finally:
        await db.close()
