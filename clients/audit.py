"""The auditor: verify a federation without trusting its operator.

Trusting only the server's log public key and the governance bootstrap key
(both obtained out of band), :func:`audit`:

1. downloads every leaf (streamed; cached on disk so an interrupted download
   resumes) and recomputes the Merkle root, which must equal the root of a
   checkpoint signed by the log key;
2. verifies every statement's signature with the key that was valid *at
   that position of the log* (a later revocation does not void earlier
   statements; a statement signed after revocation is a violation) and that
   the signer's roles allowed the statement;
3. replays every rule with the same pure functions the server uses
   (identities, policy, the record machine: roles, quorum, conflict of
   interest, transitions) and checks that each version leaf is exactly what
   the replay produces;
4. compares the rebuilt state of every record with what the server serves
   (its record list and its feed).

Every violation names the leaf index where it was found.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import time
from collections import Counter, deque
from collections.abc import AsyncIterator, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import orjson
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from clients.client import NDJSON, FederationClient, error_for
from clients.errors import TransportError
from federation.governance.machine import Dispute, RecordState
from federation.governance.policy import (
    DEFAULT_POLICY,
    PolicyInForce,
    parse_policy_set,
    policy_from_document,
)
from federation.governance.rules import check_may_sign
from federation.identities.model import ORG_ACTIVE, Identities, KeyState
from federation.identities.service import Principal
from federation.protocol.keys import decode_public_key
from federation.protocol.merkle import CompactRange, leaf_hash, verify_consistency
from federation.protocol.note import NoteError, open_note, parse_checkpoint, parse_verifier_key
from federation.protocol.problems import HashfedError, Problem
from federation.protocol.statements import (
    Envelope,
    SignedStatement,
    StatementType,
    canonical_json,
    open_envelope,
    verify_statement,
)
from federation.records.ingest import apply_items, prepare

# Fields of a version leaf the replay must reproduce exactly (time and index
# are the server's: when and where it wrote the version).
VERSION_FIELDS = (
    "record", "version", "signal_type", "value", "state", "labels", "contributors",
    "disputed", "opinions", "cause",
)  # fmt: skip
IDENTITY_TYPES = frozenset(
    {
        StatementType.GENESIS, StatementType.ORG_ADMIT, StatementType.ORG_SUSPEND,
        StatementType.ORG_REINSTATE, StatementType.KEY_ADD, StatementType.KEY_RETIRE,
        StatementType.KEY_REVOKE,
    }
)  # fmt: skip
MAX_VIOLATIONS = 10_000
# A leaf line carries a whole statement (up to 100,000 items, base64 twice).
MAX_LEAF_LINE = 1 << 28
FEED_STREAM_LIMIT = 100_000  # versions per feed request; the audit follows has_more


class AuditError(Exception):
    """The audit could not run (not: the audit found violations)."""


@dataclass(frozen=True)
class Violation:
    index: int | None  # log index where it was found; None for whole-log findings
    check: str  # short name of the check
    detail: str


@dataclass
class AuditReport:
    server: str
    origin: str
    size: int = 0
    root: str = ""
    checkpoint_verified: bool = False
    leaves: int = 0
    statements: int = 0
    signatures_verified: int = 0
    versions_checked: int = 0
    records_compared: int = 0
    feed_items_compared: int = 0
    statement_types: dict[str, int] = field(default_factory=dict)
    violations: list[Violation] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.violations

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["ok"] = self.ok
        return data


class Replay:
    """Replays the log leaf by leaf with the server's own pure rules."""

    def __init__(self, governance_key: Ed25519PublicKey, report: AuditReport) -> None:
        self.governance_key = governance_key
        self.report = report
        self.identities = Identities()
        self.policy: PolicyInForce = DEFAULT_POLICY
        self.records: dict[str, RecordState] = {}
        self.heads: dict[str, int] = {}
        self.disputes: dict[str, Dispute] = {}
        self.expected: deque[tuple[dict[str, Any], bool]] = deque()
        self.visible: dict[int, bytes] = {}  # index -> leaf hash of versions consumers see
        self.tree = CompactRange()
        self.types: Counter[str] = Counter()
        self.next_index = 0

    def violation(self, index: int | None, check: str, detail: str) -> None:
        if len(self.report.violations) < MAX_VIOLATIONS:
            self.report.violations.append(Violation(index, check, detail))

    def add(self, index: int, leaf: bytes) -> None:
        """Take the leaf at ``index`` (leaves must come in order)."""
        if index != self.next_index:
            self.violation(index, "sequence", f"leaf {self.next_index} is missing (got {index})")
        self.next_index = index + 1
        hashed = leaf_hash(leaf)
        self.tree.append(hashed)
        self.report.leaves += 1
        try:
            doc = orjson.loads(leaf)
        except orjson.JSONDecodeError:
            self.violation(index, "leaf", "leaf is not JSON")
            return
        if not isinstance(doc, dict) or canonical_json(doc) != leaf:
            self.violation(index, "leaf", "leaf is not canonical JSON")
            return
        if doc.get("index") != index:
            self.violation(
                index, "position", f"leaf says it is at {doc.get('index')}, found at {index}"
            )
        kind = doc.get("kind")
        if kind == "statement":
            self._statement(index, doc)
        elif kind == "version":
            self._version(index, doc, hashed)
        else:
            self.violation(index, "leaf", f"unknown leaf kind {kind!r}")

    def finish(self) -> None:
        if self.expected:
            self.violation(
                self.next_index, "versions", f"{len(self.expected)} versions missing at the end"
            )
        self.report.statement_types = dict(sorted(self.types.items()))

    # Statements

    def _open(self, index: int, doc: dict[str, Any]) -> SignedStatement | None:
        try:
            return open_envelope(Envelope(statement=doc["statement"], signature=doc["signature"]))
        except (HashfedError, KeyError, TypeError, ValueError) as err:
            self.violation(index, "statement", f"statement cannot be opened: {err}")
            return None

    def _statement(self, index: int, doc: dict[str, Any]) -> None:
        if self.expected:
            self.violation(index, "versions", f"{len(self.expected)} versions of the previous "
                           "statement are missing")  # fmt: skip
            self.expected.clear()
        statement = self._open(index, doc)
        if statement is None:
            return
        self.report.statements += 1
        self.types[statement.type] += 1
        roles = self._check_signer(index, statement)
        principal = Principal(statement.org, statement.key_id, roles)
        try:
            self._apply(index, statement, principal)
        except HashfedError as err:
            self.violation(index, "rules", f"{statement.type} by {statement.org!r} breaks a "
                           f"rule: {err.detail}")  # fmt: skip

    def _check_signer(self, index: int, statement: SignedStatement) -> frozenset[str]:
        if statement.type == StatementType.GENESIS:
            if index != 0:
                self.violation(index, "genesis", "a genesis statement after leaf 0")
            self._verify(index, statement, self.governance_key, "the governance bootstrap key")
            roles = statement.payload.get("roles")
            return frozenset(roles) if isinstance(roles, list) else frozenset()
        try:
            found: KeyState | None = self.identities.check_signer(statement)
        except HashfedError as err:
            self.violation(index, "signer", err.detail)
            found = self.identities.keys.get(statement.key_id)
        if found is None:
            return frozenset()
        key = found
        self._verify(index, statement, Ed25519PublicKey.from_public_bytes(key.public_key),
                     f"key {key.id} of {key.org!r}")  # fmt: skip
        org = self.identities.orgs.get(statement.org)
        roles = org.roles if org is not None and org.status == ORG_ACTIVE else frozenset()
        try:
            check_may_sign(statement.type, roles)
        except HashfedError as err:
            self.violation(index, "roles", err.detail)
        return roles

    def _verify(
        self, index: int, statement: SignedStatement, key: Ed25519PublicKey, who: str
    ) -> None:
        try:
            verify_statement(statement, key)
            self.report.signatures_verified += 1
        except HashfedError:
            self.violation(index, "signature", f"{statement.type} is not validly signed by {who}")

    def _apply(self, index: int, statement: SignedStatement, principal: Principal) -> None:
        stype = statement.type
        if stype in IDENTITY_TYPES:
            self.identities.apply(statement, index, 0)
            return
        if stype == StatementType.POLICY_SET:
            payload = parse_policy_set(statement)
            if payload.version != self.policy.version + 1:
                raise HashfedError(
                    Problem.CONFLICT,
                    f"policy version {payload.version} after {self.policy.version}",
                )
            self.policy = policy_from_document(payload.version, payload.policy)
            return
        prepared = prepare(statement, self.policy.taxonomy)
        changes = apply_items(statement, principal, prepared, self.records, self.disputes,
                              self.policy, 0)  # fmt: skip
        if not changes.any:
            self.violation(index, "rules", f"{stype} was logged but changes nothing")
        for record in (*changes.new, *changes.changed):
            self.expected.append((record.version_fields(statement.id, 0), record.visible))

    # Versions

    def _version(self, index: int, doc: dict[str, Any], hashed: bytes) -> None:
        if not self.expected:
            self.violation(index, "versions", "a version no statement caused")
            return
        wanted, visible = self.expected.popleft()
        self.report.versions_checked += 1
        differs = [f for f in VERSION_FIELDS if doc.get(f) != wanted[f]]
        if differs:
            shown = "; ".join(f"{f}: log {doc.get(f)!r}, rules {wanted[f]!r}" for f in differs[:3])
            self.violation(index, "version", f"record {wanted['record']} v{wanted['version']} "
                           f"differs from the replay ({shown})")  # fmt: skip
        self.heads[wanted["record"]] = index
        if visible:
            self.visible[index] = hashed


# ---------------------------------------------------------------- download


class LeafCache:
    """Leaves already downloaded, in an append-only NDJSON file (resumable audits)."""

    def __init__(self, path: Path | None) -> None:
        self.path = path

    def read(self) -> list[tuple[int, bytes]]:
        if self.path is None or not self.path.exists():
            return []
        leaves: list[tuple[int, bytes]] = []
        with self.path.open("rb") as fh:
            for line in fh:
                try:
                    doc = orjson.loads(line)
                    leaves.append((int(doc["index"]), base64.b64decode(doc["leaf"])))
                except (orjson.JSONDecodeError, KeyError, ValueError, binascii.Error):
                    break  # a torn last line: download again from there
                if leaves[-1][0] != len(leaves) - 1:
                    leaves.pop()
                    break
        return leaves

    def writer(self) -> Any:
        if self.path is None:
            return None
        self.path.parent.mkdir(parents=True, exist_ok=True)
        return self.path.open("ab")

    def reset(self) -> None:
        if self.path is not None and self.path.exists():
            self.path.unlink()


async def stream_leaves(
    client: FederationClient, start: int, end: int
) -> AsyncIterator[tuple[int, bytes]]:
    """Leaves [start, end) from the server's NDJSON stream; a truncated stream raises."""
    url = client.url("/v1/log/leaves", {"start": start, "end": end})
    headers = client.signed_headers("GET", url, None, {"Accept": NDJSON, "Accept-Encoding": "gzip"})
    async with client.session.get(url, headers=headers) as resp:
        if resp.status >= 400:
            raise error_for(resp.status, resp.headers.get("Content-Type", ""), await resp.read())
        ended = False
        while line := await resp.content.readline(max_line_length=MAX_LEAF_LINE):
            doc = orjson.loads(line)
            if doc.get("kind") == "end":
                ended = True
                break
            yield int(doc["index"]), base64.b64decode(doc["leaf"])
        if not ended:
            raise TransportError("leaf stream ended without its trailer (truncated); run again")


# ---------------------------------------------------------------- audit


def parse_public_key(text: str) -> tuple[str | None, Ed25519PublicKey]:
    """A key given out of band: a signed-note verifier key ``name+hash+key``, or raw base64."""
    text = text.strip()
    try:
        return parse_verifier_key(text)
    except NoteError:
        return None, decode_public_key(text)


async def audit(
    client: FederationClient,
    *,
    log_key: Ed25519PublicKey,
    origin: str,
    governance_key: Ed25519PublicKey,
    cache: Path | None = None,
    from_checkpoint: str | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> AuditReport:
    """Audit the federation behind ``client`` (which must act as an auditor or admin)."""
    started = time.perf_counter()
    report = AuditReport(server=str(client.server), origin=origin)
    note = (await client.request("GET", "/v1/log/checkpoint")).body.decode()
    try:
        checkpoint = parse_checkpoint(open_note(note, origin, log_key))
    except NoteError as err:
        report.violations.append(Violation(None, "checkpoint", f"latest checkpoint does not "
                                           f"verify with the log key: {err}"))  # fmt: skip
        return report
    report.checkpoint_verified = True
    report.size = checkpoint.size
    if from_checkpoint is not None:
        await _check_consistency(client, from_checkpoint, log_key, origin, checkpoint, report)

    replay = Replay(governance_key, report)
    leaf_cache = LeafCache(cache)
    cached = leaf_cache.read()
    if len(cached) > checkpoint.size:
        leaf_cache.reset()
        cached = []
    for index, leaf in cached:
        replay.add(index, leaf)
    if progress:
        progress(len(cached), checkpoint.size)
    sink = leaf_cache.writer()
    try:
        count = len(cached)
        async for index, leaf in stream_leaves(client, len(cached), checkpoint.size):
            replay.add(index, leaf)
            if sink is not None:
                sink.write(b'{"index":%d,"leaf":"%s"}\n' % (index, base64.b64encode(leaf)))
            count += 1
            if progress and count % 5000 == 0:
                progress(count, checkpoint.size)
    finally:
        if sink is not None:
            sink.flush()
            os.fsync(sink.fileno())
            sink.close()
    if progress:
        progress(checkpoint.size, checkpoint.size)
    replay.finish()
    if replay.next_index != checkpoint.size:
        replay.violation(
            replay.next_index, "sequence",
            f"the server sent {replay.next_index} leaves for a tree of {checkpoint.size}",
        )  # fmt: skip
    root = replay.tree.root() if replay.tree.size else hashlib.sha256(b"").digest()
    report.root = base64.b64encode(root).decode()
    if root != checkpoint.root_hash:
        replay.violation(None, "root", "the leaves do not hash to the signed checkpoint's root: "
                         "history was changed or leaves are missing")  # fmt: skip
    await _compare_records(client, replay)
    await _compare_feed(client, replay)
    report.seconds = round(time.perf_counter() - started, 3)
    return report


async def _check_consistency(
    client: FederationClient, note: str, log_key: Ed25519PublicKey, origin: str,
    latest: Any, report: AuditReport,
) -> None:  # fmt: skip
    try:
        old = parse_checkpoint(open_note(note, origin, log_key))
    except NoteError as err:
        report.violations.append(Violation(None, "checkpoint", f"--from-checkpoint: {err}"))
        return
    if old.size > latest.size:
        report.violations.append(Violation(None, "consistency", f"the log shrank from {old.size} "
                                           f"to {latest.size}"))  # fmt: skip
        return
    if old.size == 0 or old.size == latest.size:
        if old.size == latest.size and old.root_hash != latest.root_hash:
            report.violations.append(Violation(None, "consistency", "same size, different root"))
        return
    proof = await client.get_json("/v1/log/proof/consistency",
                                  {"old_size": old.size, "size": latest.size})  # fmt: skip
    try:
        verify_consistency(old.size, latest.size, [base64.b64decode(h) for h in proof["hashes"]],
                           old.root_hash, latest.root_hash)  # fmt: skip
    except Exception as err:  # MerkleError: the history the auditor held was rewritten
        report.violations.append(Violation(None, "consistency", f"checkpoint {old.size} is not "
                                           f"a prefix of {latest.size}: {err}"))  # fmt: skip


async def _compare_records(client: FederationClient, replay: Replay) -> None:
    """Every record the server serves must equal the replay's (and none may be missing)."""
    seen: set[str] = set()
    after: str | None = None
    while True:
        params: dict[str, str | int] = {"limit": 10_000}
        if after:
            params["after"] = after
        page = await client.get_json("/v1/records", params)
        for served in page["records"]:
            rid = served["id"]
            seen.add(rid)
            replay.report.records_compared += 1
            rebuilt = replay.records.get(rid)
            if rebuilt is None:
                replay.violation(
                    None, "records", f"record {rid} is served but no statement made it"
                )
                continue
            mine = {
                "state": rebuilt.state.value, "labels": rebuilt.labels,
                "contributors": rebuilt.contributors, "version": rebuilt.version,
                "disputed": rebuilt.disputed, "head_index": replay.heads.get(rid),
            }  # fmt: skip
            differs = [k for k, v in mine.items() if served.get(k) != v]
            if differs:
                shown = "; ".join(
                    f"{k}: served {served.get(k)!r}, log {mine[k]!r}" for k in differs
                )
                replay.violation(
                    replay.heads.get(rid), "records",
                    f"record {rid} as served differs from the log ({shown})",
                )  # fmt: skip
        after = page["next"]
        if after is None:
            break
    for rid in replay.records.keys() - seen:
        replay.violation(
            replay.heads.get(rid), "records", f"record {rid} is in the log but not served"
        )


async def _compare_feed(client: FederationClient, replay: Replay) -> None:
    """The feed must serve exactly the visible versions, byte for byte."""
    served: set[int] = set()
    cursor: str | None = None
    while True:
        end: dict[str, Any] = {}
        async for item in client.stream_feed(cursor, limit=FEED_STREAM_LIMIT):
            if item.get("kind") == "end":
                end = item
            else:
                _compare_feed_item(replay, item, served)
        cursor = end.get("next_cursor")
        if not end.get("has_more"):
            break
    for index in sorted(replay.visible.keys() - served)[:100]:
        replay.violation(index, "feed", "a visible version is missing from the feed")


def _compare_feed_item(replay: Replay, item: dict[str, Any], served: set[int]) -> None:
    index = item.get("index")
    replay.report.feed_items_compared += 1
    if not isinstance(index, int) or index not in replay.visible:
        replay.violation(index if isinstance(index, int) else None, "feed",
                         "the feed serves a version consumers should not see")  # fmt: skip
        return
    served.add(index)
    if leaf_hash(canonical_json(item)) != replay.visible[index]:
        replay.violation(index, "feed", "the feed's version differs from the log's leaf")
