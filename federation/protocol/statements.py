"""Signed statements: canonical bytes, domain separation, envelopes.

A statement is a JSON object (strings, integers, booleans, lists, objects; no
floats) canonicalised with RFC 8785 and prefixed with a domain-separation line
that names its type and version::

    hashfed-statement/v1 <type>\\n<canonical JSON>

The Ed25519 signature covers exactly those bytes; the statement's id is the
SHA-256 of them. Clients send an :class:`Envelope` carrying the signed bytes
verbatim (base64), and the server stores them verbatim, so nobody ever needs
to re-canonicalise to check a signature.
"""

from __future__ import annotations

import base64
import binascii
import enum
import hashlib
import re
import secrets
import time
from dataclasses import dataclass
from typing import Any

import orjson
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from pydantic import BaseModel, ConfigDict, Field

from federation.protocol.problems import HashfedError, Problem

STATEMENT_VERSION = 1
DOMAIN_TAG = b"hashfed-statement/v1 "
MAX_INT = 2**53 - 1
# A statement is refused when its claimed time is this far from the server's clock.
STATEMENT_MAX_AGE_S = 24 * 3600
STATEMENT_MAX_SKEW_S = 300
STATEMENT_NONCE_BYTES = 12
ORG_ID_PATTERN = r"^[a-z0-9][a-z0-9_-]{1,62}$"
KEY_ID_PATTERN = r"^[0-9a-f]{32}$"
_TYPE_RE = re.compile(rb"^[a-z][a-z0-9_.]{1,39}$")


class StatementType(enum.StrEnum):
    GENESIS = "federation.genesis"
    ORG_ADMIT = "org.admit"
    ORG_SUSPEND = "org.suspend"
    ORG_REINSTATE = "org.reinstate"
    KEY_ADD = "key.add"
    KEY_RETIRE = "key.retire"
    KEY_REVOKE = "key.revoke"
    POLICY_SET = "policy.set"
    SUBMISSIONS = "submissions"
    WITHDRAWALS = "withdrawals"
    REVIEWS = "reviews"
    OPINIONS = "opinions"
    DISPUTE_OPEN = "dispute.open"
    DISPUTE_RESOLVE = "dispute.resolve"


class Role(enum.StrEnum):
    CONTRIBUTOR = "contributor"
    CONSUMER = "consumer"
    ADMIN = "admin"
    AUDITOR = "auditor"


def canonical_json(obj: Any) -> bytes:
    """RFC 8785 canonical JSON of ``obj``; the one canonicalisation function.

    For the value domain statements are restricted to (strings, integers below
    2**53, booleans, null, lists, objects with ASCII keys; no floats), sorted-key
    compact UTF-8 output is byte-identical to RFC 8785 — the test suite checks
    this against the ``rfc8785`` reference implementation — and orjson produces
    it about 60 times faster, which matters for million-item batches.
    """
    return orjson.dumps(obj, option=orjson.OPT_SORT_KEYS)


def statement_id(signed_bytes: bytes) -> str:
    """The id of a statement: hex SHA-256 of its exact signed bytes."""
    return hashlib.sha256(signed_bytes).hexdigest()


def signed_bytes_for(payload: dict[str, Any]) -> bytes:
    """The exact bytes to sign for a statement payload (domain line + canonical JSON)."""
    stype = payload.get("type")
    if not isinstance(stype, str):
        raise ValueError("statement payload needs a string 'type'")
    return DOMAIN_TAG + stype.encode("ascii") + b"\n" + canonical_json(payload)


class Envelope(BaseModel):
    """What travels on the wire: the signed bytes and the signature, both base64."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    statement: str = Field(description="Standard base64 of the exact signed bytes")
    signature: str = Field(description="Standard base64 of the 64-byte Ed25519 signature")


@dataclass(frozen=True, slots=True)
class SignedStatement:
    """An envelope opened and checked for shape (not yet for its signature)."""

    id: str
    type: str
    signed_bytes: bytes
    signature: bytes
    payload: dict[str, Any]

    @property
    def org(self) -> str:
        return str(self.payload["org"])

    @property
    def key_id(self) -> str:
        return str(self.payload["key"])

    @property
    def created(self) -> int:
        return int(self.payload["created"])

    def envelope(self) -> Envelope:
        return Envelope(
            statement=base64.b64encode(self.signed_bytes).decode("ascii"),
            signature=base64.b64encode(self.signature).decode("ascii"),
        )


def sign_statement(
    payload: dict[str, Any], private_key: Ed25519PrivateKey, *, key_id: str, org: str
) -> SignedStatement:
    """Complete ``payload`` with org, key and created time, canonicalise and sign it."""
    full = dict(payload)
    full.setdefault("org", org)
    full.setdefault("key", key_id)
    full.setdefault("created", int(time.time()))
    full.setdefault("v", STATEMENT_VERSION)
    # Each signing is a new statement; only a retry of the same bytes is a repeat.
    full.setdefault("nonce", secrets.token_hex(STATEMENT_NONCE_BYTES))
    data = signed_bytes_for(full)
    return SignedStatement(
        id=statement_id(data),
        type=str(full["type"]),
        signed_bytes=data,
        signature=private_key.sign(data),
        payload=full,
    )


def _b64(value: str, what: str) -> bytes:
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise HashfedError(Problem.STATEMENT_MALFORMED, f"{what} is not valid base64") from exc


def open_envelope(envelope: Envelope) -> SignedStatement:
    """Decode an envelope and check the statement's shape and canonical form.

    Raises ``HashfedError`` (STATEMENT_MALFORMED, STATEMENT_NOT_CANONICAL) with
    a precise message; the signature is checked by :func:`verify_statement`.
    """
    data = _b64(envelope.statement, "statement")
    signature = _b64(envelope.signature, "signature")
    if len(signature) != 64:
        raise HashfedError(Problem.STATEMENT_MALFORMED, "signature must be 64 bytes")
    if not data.startswith(DOMAIN_TAG):
        raise HashfedError(
            Problem.STATEMENT_MALFORMED,
            "statement must start with the domain line 'hashfed-statement/v1 <type>'",
        )
    line_end = data.find(b"\n", len(DOMAIN_TAG))
    if line_end < 0:
        raise HashfedError(Problem.STATEMENT_MALFORMED, "statement has no domain line")
    stype = data[len(DOMAIN_TAG) : line_end]
    if not _TYPE_RE.match(stype):
        raise HashfedError(Problem.STATEMENT_MALFORMED, "statement type in domain line is invalid")
    body = data[line_end + 1 :]
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise HashfedError(Problem.STATEMENT_MALFORMED, f"statement is not JSON: {exc}") from exc
    if not isinstance(payload, dict):
        raise HashfedError(Problem.STATEMENT_MALFORMED, "statement must be a JSON object")
    if canonical_json(payload) != body:
        raise HashfedError(
            Problem.STATEMENT_NOT_CANONICAL,
            "statement bytes are not RFC 8785 canonical JSON (sorted keys, no spaces, no floats)",
        )
    if payload.get("type") != stype.decode("ascii"):
        raise HashfedError(
            Problem.STATEMENT_MALFORMED, "statement 'type' differs from its domain line"
        )
    if not _header_ok(payload):
        raise HashfedError(
            Problem.STATEMENT_MALFORMED,
            "statement needs 'org' (organisation id), 'key' (32 hex key id), "
            f"'created' (integer unix time), 'v' = {STATEMENT_VERSION} and, optionally, "
            "'nonce' (8-64 URL-safe characters)",
        )
    return SignedStatement(
        id=statement_id(data),
        type=str(payload["type"]),
        signed_bytes=data,
        signature=signature,
        payload=payload,
    )


NONCE_PATTERN = r"^[A-Za-z0-9_-]{8,64}$"
_HEADER_RE = {
    "org": re.compile(ORG_ID_PATTERN),
    "key": re.compile(KEY_ID_PATTERN),
    "nonce": re.compile(NONCE_PATTERN),
}


def _header_ok(payload: dict[str, Any]) -> bool:
    org, key, created, v = (payload.get(k) for k in ("org", "key", "created", "v"))
    nonce = payload.get("nonce")
    return (
        (nonce is None or (isinstance(nonce, str) and _HEADER_RE["nonce"].match(nonce) is not None))
        and isinstance(org, str)
        and _HEADER_RE["org"].match(org) is not None
        and isinstance(key, str)
        and _HEADER_RE["key"].match(key) is not None
        and type(created) is int
        and 0 <= created <= MAX_INT
        and v == STATEMENT_VERSION
        and type(v) is int
    )


def verify_statement(statement: SignedStatement, public_key: Ed25519PublicKey) -> None:
    """Check the Ed25519 signature; raises STATEMENT_SIGNATURE_INVALID."""
    try:
        public_key.verify(statement.signature, statement.signed_bytes)
    except InvalidSignature as exc:
        raise HashfedError(
            Problem.STATEMENT_SIGNATURE_INVALID,
            f"statement {statement.id[:16]}… is not signed by key {statement.key_id}",
        ) from exc


def check_statement_time(statement: SignedStatement, now: int | None = None) -> None:
    """Refuse statements claiming a time far in the past or in the future."""
    now = int(time.time()) if now is None else now
    if statement.created > now + STATEMENT_MAX_SKEW_S:
        raise HashfedError(
            Problem.STATEMENT_STALE,
            "statement 'created' is in the future; check the signer's clock",
        )
    if statement.created < now - STATEMENT_MAX_AGE_S:
        raise HashfedError(
            Problem.STATEMENT_STALE,
            f"statement 'created' is older than {STATEMENT_MAX_AGE_S} s; sign it again",
        )
