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
import bisect
import gc
import hashlib
import ipaddress
import os
import time
from collections import Counter, deque
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import aiohttp
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
CACHE_BATCH = 5_000  # leaves per batch read from the cache
# A leaf's first key is "cause" or "index": lines of a raw leaf stream that start
# with "kind" are the server's (a gap, then the trailer that ends every stream).
CONTROL = b'{"kind":'
TRAILER = b'{"kind":"end"'


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
    records_after_checkpoint: int = 0  # changed after the audited checkpoint (live federation)
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
        # The versions consumers see, in log order: their indices and leaf hashes.
        self.visible_index: list[int] = []
        self.visible_hash: list[bytes] = []
        self.tree = CompactRange()
        self.types: Counter[str] = Counter()
        self.next_index = 0
        self.position = 0  # where the next line of a raw stream is (add_lines)

    def violation(self, index: int | None, check: str, detail: str) -> None:
        if len(self.report.violations) < MAX_VIOLATIONS:
            self.report.violations.append(Violation(index, check, detail))

    def add_lines(self, lines: list[bytes]) -> None:
        """Take the lines of a raw leaf stream: each the next leaf, except a ``gap``
        line, by which the server says where the following leaf is."""
        take, sha256 = self._take, hashlib.sha256
        hashes: list[bytes] = []
        for line in lines:
            if line.startswith(CONTROL):  # a leaf's first key is "cause" or "index"
                doc = _json_object(line)
                if doc is not None and doc.get("kind") == "gap" and type(doc.get("next")) is int:
                    self.position = doc["next"]
                    continue
            hashed = sha256(b"\x00" + line).digest()  # leaf_hash, inlined
            hashes.append(hashed)
            take(self.position, line, hashed)
            self.position += 1
        self.tree.extend(hashes)

    def add(self, index: int, leaf: bytes) -> None:
        """Take the leaf at ``index`` (leaves must come in order)."""
        hashed = leaf_hash(leaf)
        self.tree.append(hashed)
        self._take(index, leaf, hashed)

    def _take(self, index: int, leaf: bytes, hashed: bytes) -> None:
        """Check the leaf at ``index`` whose hash (already in the tree) is ``hashed``."""
        if index != self.next_index:
            self.violation(index, "sequence", f"leaf {self.next_index} is missing (got {index})")
        self.next_index = index + 1
        self.report.leaves += 1
        # Most leaves are the versions the replay expects: build the expected leaf and
        # compare bytes. Equal bytes pass every check below; anything else takes the
        # full path, which names what is wrong.
        if self.expected and leaf.startswith(b'{"cause":') and self._same_version(index, leaf):
            wanted, visible = self.expected.popleft()
            self.report.versions_checked += 1
            self.heads[wanted["record"]] = index
            if visible:
                self.visible_index.append(index)
                self.visible_hash.append(hashed)
            return
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

    def _same_version(self, index: int, leaf: bytes) -> bool:
        """Whether ``leaf`` is exactly the next expected version at ``index``.

        The leaf's ``time`` (the server's clock, not checked) is taken from its
        bytes; a leaf that is not the canonical JSON of the expected fields with
        that time, its kind and its index is not equal.
        """
        at = leaf.rfind(b',"time":')
        end = leaf.find(b",", at + 8)
        if at < 0 or end < 0:
            return False
        try:
            time = int(leaf[at + 8 : end])
        except ValueError:
            return False
        wanted = self.expected[0][0]
        wanted["kind"] = "version"
        wanted["index"] = index
        wanted["time"] = time
        try:
            return canonical_json(wanted) == leaf
        except orjson.JSONEncodeError:  # a time past 64 bits: the full path says what
            return False

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
            self.visible_index.append(index)
            self.visible_hash.append(hashed)


# ---------------------------------------------------------------- download


class LeafCache:
    """Leaves already downloaded, for resumable audits: a header line, then each leaf's
    exact bytes on a line of its own, in log order (a leaf is canonical JSON: no newline)."""

    HEADER = b"hashfed-audit-leaves/2\n"

    def __init__(self, path: Path | None) -> None:
        self.path = path

    def read(self, limit: int) -> Iterator[list[bytes]]:
        """The cached leaves, in batches, unless there are more than ``limit`` (another
        log's: the cache starts again); the file is cut after the last whole line, so
        that appends continue it."""
        if self.path is None or not self.path.exists():
            return
        with self.path.open("r+b") as fh:
            lines = sum(block.count(b"\n") for block in iter(lambda: fh.read(1 << 24), b""))
            fh.seek(0)
            if fh.readline() != self.HEADER or lines - 1 > limit:
                fh.truncate(0)  # another format, not a cache, or a longer log: start again
                return
            good = fh.tell()
            batch: list[bytes] = []
            for line in fh:
                if not line.endswith(b"\n"):  # torn: download again from there
                    break
                batch.append(line[:-1])
                good += len(line)
                if len(batch) == CACHE_BATCH:
                    yield batch
                    batch = []
            if batch:
                yield batch
            fh.truncate(good)

    def writer(self) -> BinaryIO | None:
        if self.path is None:
            return None
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fh = self.path.open("ab")
        if fh.tell() == 0:
            fh.write(self.HEADER)
        return fh


async def ndjson_lines(resp: aiohttp.ClientResponse) -> AsyncIterator[list[bytes]]:
    """The complete lines of an NDJSON response body, in batches as they arrive
    (split in C, not line by line); a last line without its newline raises."""
    parts: list[bytes] = []
    pending = 0
    try:
        async for chunk in resp.content.iter_any():
            if b"\n" not in chunk:
                parts.append(chunk)
                pending += len(chunk)
                if pending > MAX_LEAF_LINE:
                    raise TransportError(f"a line of over {MAX_LEAF_LINE} bytes")
                continue
            lines = chunk.split(b"\n")
            if parts:
                parts.append(lines[0])
                lines[0] = b"".join(parts)
                parts, pending = [], 0
            last = lines.pop()
            if last:
                parts.append(last)
                pending = len(last)
            yield lines
    except aiohttp.ClientPayloadError as exc:
        raise TransportError(f"stream broke off: {exc}") from exc
    if parts:
        raise TransportError("stream ended inside a line (truncated); run again")


async def stream_leaves(
    client: FederationClient, start: int, end: int
) -> AsyncIterator[list[bytes]]:
    """Lines of the server's raw NDJSON stream of leaves [start, end), in batches: each
    a leaf's exact bytes, or a gap line (see :meth:`Replay.add_lines`); a stream without
    its trailer raises."""
    url = client.url("/v1/log/leaves", {"start": start, "end": end, "format": "raw"})
    async with client.session.get(url, headers=_stream_headers(client, url)) as resp:
        if resp.status >= 400:
            raise error_for(resp.status, resp.headers.get("Content-Type", ""), await resp.read())
        ended = False
        async for lines in ndjson_lines(resp):
            if lines and lines[-1].startswith(TRAILER):
                lines.pop()
                ended = True
            if lines:
                yield lines
            if ended:
                break
        if not ended:
            raise TransportError("leaf stream ended without its trailer (truncated); run again")


def _stream_headers(client: FederationClient, url: Any) -> dict[str, str]:
    """Headers of a whole-log stream: gzip, except from a server on this machine (there
    it costs both ends CPU and saves nothing)."""
    extra = {"Accept": NDJSON, "Accept-Encoding": "identity" if _loopback(client) else "gzip"}
    return client.signed_headers("GET", url, None, extra)


def _loopback(client: FederationClient) -> bool:
    host = client.server.host or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


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
    """Audit the federation behind ``client`` (which must act as an auditor or admin).

    The audit is of one checkpoint, the latest when it starts: the leaves, the
    feed and the records are taken as of its tree size, so writes made while
    the audit runs are no violations (records they changed are checked against
    the newer leaves, see :func:`_compare_later_records`).
    """
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

    # The replay's state only grows, some ten objects a leaf, and makes no garbage cycles:
    # the cyclic collector would walk it again and again (a third of the replay's time
    # at a million leaves, even with the state frozen out of its sight as it grows).
    collecting = gc.isenabled()
    gc.disable()
    try:
        await _audit(client, report, checkpoint, log_key, origin, governance_key, cache, progress)
    finally:
        if collecting:
            gc.enable()
    report.seconds = round(time.perf_counter() - started, 3)
    return report


async def _audit(
    client: FederationClient, report: AuditReport, checkpoint: Any, log_key: Ed25519PublicKey,
    origin: str, governance_key: Ed25519PublicKey, cache: Path | None,
    progress: Callable[[int, int], None] | None,
) -> None:  # fmt: skip
    size = checkpoint.size
    replay = Replay(governance_key, report)
    leaf_cache = LeafCache(cache)
    for batch in leaf_cache.read(size):
        replay.add_lines(batch)
    if progress:
        progress(replay.position, size)
    sink = leaf_cache.writer()
    # The cache is written by a thread of its own (file writes release the GIL): the
    # copies into the page cache, a second of CPU a million leaves, leave the replay's.
    writer = ThreadPoolExecutor(1, "audit-cache") if sink is not None else None
    written: list[Future[None]] = []
    try:
        shown = replay.position
        async for batch in stream_leaves(client, replay.position, size):
            if writer is not None and sink is not None:
                written.append(writer.submit(sink.writelines, (b"\n".join(batch), b"\n")))
            replay.add_lines(batch)
            if progress and replay.position - shown >= 5000:
                progress(replay.position, size)
                shown = replay.position
    finally:
        if writer is not None and sink is not None:
            writer.shutdown(wait=True)
            sink.flush()
            os.fsync(sink.fileno())
            sink.close()
    for write in written:
        write.result()  # a failed write raises here
    if progress:
        progress(size, size)
    replay.finish()
    if replay.next_index != size:
        replay.violation(
            replay.next_index, "sequence",
            f"the server sent {replay.next_index} leaves for a tree of {size}",
        )  # fmt: skip
    root = replay.tree.root() if replay.tree.size else hashlib.sha256(b"").digest()
    report.root = base64.b64encode(root).decode()
    if root != checkpoint.root_hash:
        replay.violation(None, "root", "the leaves do not hash to the signed checkpoint's root: "
                         "history was changed or leaves are missing")  # fmt: skip
    later = await _compare_records(client, replay, size)
    if later:
        await _compare_later_records(client, replay, later, log_key, origin, checkpoint)
    await _compare_feed(client, replay, size)


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


# Record fields the server serves that the log determines.
RECORD_FIELDS = ("state", "labels", "contributors", "version", "disputed")


async def _compare_records(
    client: FederationClient, replay: Replay, size: int
) -> list[dict[str, Any]]:
    """Every record the server serves must equal the replay's (and none may be missing).

    The server streams each record's log-determined state as a canonical JSON
    line: the replay's state is encoded the same way and compared as bytes;
    only a line that differs is parsed, to say how. A record whose head
    version is at or past ``size`` changed after the audited checkpoint: it
    is returned, to be checked against that version.
    """
    check = _RecordsCheck(replay, size)
    url = client.url("/v1/records")
    ended = False
    async with client.session.get(url, headers=_stream_headers(client, url)) as resp:
        if resp.status >= 400:
            raise error_for(resp.status, resp.headers.get("Content-Type", ""), await resp.read())
        async for lines in ndjson_lines(resp):
            if lines and lines[-1].startswith(TRAILER):
                lines.pop()
                ended = True
            check.lines(lines)
            if ended:
                break
    if not ended:
        raise TransportError("records stream ended without its trailer (truncated); run again")
    for rid in replay.records.keys() - check.seen:
        replay.violation(
            replay.heads.get(rid), "records", f"record {rid} is in the log but not served"
        )
    return check.later


class _RecordsCheck:
    def __init__(self, replay: Replay, size: int) -> None:
        self.replay = replay
        self.size = size
        self.seen: set[str] = set()
        self.later: list[dict[str, Any]] = []

    def lines(self, lines: list[bytes]) -> None:
        self.replay.report.records_compared += len(lines)
        records, heads, seen = self.replay.records, self.replay.heads, self.seen
        for line in lines:
            at = line.find(b'"id":"') + 6
            rid = line[at : at + 32].decode("ascii", "replace")
            rebuilt = records.get(rid)
            if rebuilt is not None and line == canonical_json(
                {
                    "contributors": rebuilt.contributors,
                    "disputed": rebuilt.disputed,
                    "head_index": heads.get(rid),
                    "id": rid,
                    "labels": rebuilt.labels,
                    "state": rebuilt.state,
                    "version": rebuilt.version,
                }
            ):
                seen.add(rid)
            else:
                self._other(line)

    def _other(self, line: bytes) -> None:
        """A line that is not the replay's state of its record: say how."""
        replay = self.replay
        served = _json_object(line)
        rid = served.get("id") if served is not None else None
        if served is None or not isinstance(rid, str):
            replay.violation(None, "records", "the records listing has a line that is no record")
            return
        self.seen.add(rid)
        head = served.get("head_index")
        if type(head) is int and head >= self.size:
            self.later.append(served)
            return
        rebuilt = replay.records.get(rid)
        if rebuilt is None:
            replay.violation(None, "records", f"record {rid} is served but no statement made it")
            return
        mine = {
            "state": rebuilt.state.value, "labels": rebuilt.labels,
            "contributors": rebuilt.contributors, "version": rebuilt.version,
            "disputed": rebuilt.disputed, "head_index": replay.heads.get(rid),
        }  # fmt: skip
        differs = [k for k, v in mine.items() if served.get(k) != v]
        if not differs:  # the same state, encoded otherwise
            return
        shown = "; ".join(f"{k}: served {served.get(k)!r}, log {mine[k]!r}" for k in differs)
        replay.violation(
            replay.heads.get(rid), "records",
            f"record {rid} as served differs from the log ({shown})",
        )  # fmt: skip


async def _compare_later_records(
    client: FederationClient, replay: Replay, later: list[dict[str, Any]],
    log_key: Ed25519PublicKey, origin: str, audited: Any,
) -> None:  # fmt: skip
    """Records that changed after the audited checkpoint (a live federation).

    Their served state must be the version leaf at their ``head_index``, in a
    newer signed checkpoint whose leaves extend the audited ones (their Merkle
    root is recomputed from the audited tree). The rules that made those
    versions are the next audit's to replay.
    """
    report = replay.report
    report.records_after_checkpoint = len(later)
    note = (await client.request("GET", "/v1/log/checkpoint")).body.decode()
    try:
        newer = parse_checkpoint(open_note(note, origin, log_key))
    except NoteError as err:
        replay.violation(None, "checkpoint", f"the newer checkpoint does not verify: {err}")
        return
    if newer.size <= audited.size:
        for served in later:
            replay.violation(
                served["head_index"], "records",
                f"record {served['id']} is served with head {served['head_index']}, past "
                f"the log's signed size {newer.size}",
            )  # fmt: skip
        return
    wanted = {served["head_index"] for served in later}
    found: dict[int, bytes] = {}
    tree = replay.tree
    index = audited.size
    async for batch in stream_leaves(client, audited.size, newer.size):
        for leaf in batch:  # a gap line, if any, is hashed as a leaf: the root tells
            tree.append(leaf_hash(leaf))
            if index in wanted:
                found[index] = leaf
            index += 1
    if index != newer.size or tree.root() != newer.root_hash:
        replay.violation(None, "root", f"the leaves from {audited.size} to {newer.size} do not "
                         "hash to the newer checkpoint's root")  # fmt: skip
        return
    for served in later:
        head, rid = served["head_index"], served["id"]
        version = found.get(head)
        doc = _json_object(version) if version is not None else None
        if doc is None or doc.get("kind") != "version" or doc.get("record") != rid:
            replay.violation(head, "records", f"record {rid} is served with head {head}, "
                             f"not one of its versions up to {newer.size}")  # fmt: skip
            continue
        differs = [k for k in RECORD_FIELDS if served.get(k) != doc.get(k)]
        if differs:
            shown = "; ".join(f"{k}: served {served.get(k)!r}, log {doc.get(k)!r}" for k in differs)
            replay.violation(
                head, "records", f"record {rid} as served differs from its version ({shown})"
            )


def _json_object(data: bytes) -> dict[str, Any] | None:
    try:
        doc = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    return doc if isinstance(doc, dict) else None


async def _compare_feed(client: FederationClient, replay: Replay, size: int) -> None:
    """The feed up to ``size`` must serve exactly the visible versions, byte for byte.

    Each line is hashed as it comes and matched with the next visible version
    (the feed is in log order); only a line that does not match is parsed.
    """
    check = _FeedCheck(replay)
    cursor: str | None = None
    while True:
        params: dict[str, str | int] = {"limit": max(size, 1), "end": size}
        if cursor:
            params["after"] = cursor
        url = client.url("/v1/feed", params)
        end: dict[str, Any] = {}
        async with client.session.get(url, headers=_stream_headers(client, url)) as resp:
            if resp.status >= 400:
                raise error_for(
                    resp.status, resp.headers.get("Content-Type", ""), await resp.read()
                )
            async for lines in ndjson_lines(resp):
                if lines and lines[-1].startswith(TRAILER):
                    end = orjson.loads(lines.pop())
                check.lines(lines)
                if end:
                    break
        if not end:
            raise TransportError("feed stream ended without its trailer (truncated); run again")
        cursor = end.get("next_cursor")
        if not end.get("has_more"):
            break
    check.finish()


class _FeedCheck:
    def __init__(self, replay: Replay) -> None:
        self.replay = replay
        self.hashes = replay.visible_hash
        self.served = bytearray(len(self.hashes))  # 1: position served
        self.next = 0  # position of the version the next line should be

    def lines(self, lines: list[bytes]) -> None:
        self.replay.report.feed_items_compared += len(lines)
        hashes, served, n = self.hashes, self.served, len(self.hashes)
        sha256 = hashlib.sha256
        position = self.next
        for line in lines:
            if position < n and sha256(b"\x00" + line).digest() == hashes[position]:
                served[position] = 1
                position += 1
            else:
                position = self._other(line, position)
        self.next = position

    def _other(self, line: bytes, position: int) -> int:
        """A line that is not the next visible version: say what it is."""
        replay = self.replay
        item = _json_object(line)
        index = item.get("index") if item is not None else None
        if type(index) is not int:
            replay.violation(None, "feed", "the feed serves a line that is not a version")
            return position
        at = bisect.bisect_left(replay.visible_index, index)
        if at == len(replay.visible_index) or replay.visible_index[at] != index:
            replay.violation(index, "feed", "the feed serves a version consumers should not see")
            return position
        self.served[at] = 1
        if leaf_hash(line) != self.hashes[at]:
            replay.violation(index, "feed", "the feed's version differs from the log's leaf")
        return max(position, at + 1)

    def finish(self) -> None:
        missing, at = 0, self.served.find(0)
        while at >= 0 and missing < 100:
            self.replay.violation(
                self.replay.visible_index[at], "feed", "a visible version is missing from the feed"
            )
            missing += 1
            at = self.served.find(0, at + 1)
