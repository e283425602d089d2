"""What a member checks on every pull, and the provenance chain of one record.

- :func:`verify_checkpoint` opens the server's newest checkpoint with the log
  key the member trusts, and checks a consistency proof from the checkpoint
  the local store kept: if the server's history changed, the pull stops
  before anything is applied.
- :func:`spot_check` proves that a version the store holds is in that
  checkpoint (the feed cannot invent a version the log does not commit to).
- :func:`record_chain` gathers, for ``hashfed verify RECORD``, the record's
  version, the statement that caused it, the signing key and both inclusions.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from typing import Any

import orjson
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from clients.client import FederationClient
from clients.store import LocalStore
from federation.protocol.keys import decode_public_key, key_id
from federation.protocol.merkle import MerkleError, leaf_hash, verify_consistency, verify_inclusion
from federation.protocol.note import (
    Checkpoint,
    NoteError,
    format_verifier_key,
    open_note,
    parse_checkpoint,
    parse_verifier_key,
)
from federation.protocol.problems import HashfedError
from federation.protocol.statements import Envelope, open_envelope, verify_statement

META_CHECKPOINT = "checkpoint"
META_LOG_KEY = "log_key"


class HistoryChanged(Exception):
    """The server's log no longer extends what this member verified before."""


class UntrustedCheckpoint(Exception):
    """The checkpoint is not signed by the log key this member trusts."""


@dataclass(frozen=True)
class Verified:
    checkpoint: Checkpoint
    note: str
    log_key: str  # verifier key string
    first_use: bool  # the key was taken from the server (no pinned key yet)


async def verify_checkpoint(
    client: FederationClient, store: LocalStore, pinned_key: str | None
) -> Verified:
    """Verify the newest checkpoint and its consistency with the one the store kept."""
    response = await client.request("GET", "/v1/log/checkpoint")
    note = response.body.decode()
    stored_key = store.get_meta(META_LOG_KEY)
    offered = response.headers.get("Hashfed-Log-Key")
    first_use = False
    if pinned_key:
        trusted = pinned_key
        if stored_key and stored_key != pinned_key:
            raise UntrustedCheckpoint(
                "the profile's log key differs from the one this store verified before; "
                "if the federation really rotated its log key, start a new store"
            )
    elif stored_key:
        trusted = stored_key
    elif offered:
        trusted, first_use = offered, True  # trust on first use, said loudly by the caller
    else:
        raise UntrustedCheckpoint("no log key: pass one with 'hashfed profile add … --log-key'")
    try:
        origin, public = parse_verifier_key(trusted)
        checkpoint = parse_checkpoint(open_note(note, origin, public))
    except NoteError as err:
        raise UntrustedCheckpoint(f"the server's checkpoint does not verify: {err}") from err
    old_note = store.get_meta(META_CHECKPOINT)
    if old_note:
        old = parse_checkpoint(open_note(old_note, origin, public))
        await _check_extends(client, old, checkpoint)
    return Verified(checkpoint, note, format_verifier_key(origin, public), first_use)


async def _check_extends(client: FederationClient, old: Checkpoint, new: Checkpoint) -> None:
    if new.size < old.size:
        raise HistoryChanged(
            f"the log shrank from {old.size} to {new.size} leaves since the last verified pull"
        )
    if new.size == old.size:
        if new.root_hash != old.root_hash:
            raise HistoryChanged(f"the log of {new.size} leaves now has a different root")
        return
    proof = await client.get_json(
        "/v1/log/proof/consistency", {"old_size": old.size, "size": new.size}
    )
    try:
        verify_consistency(
            old.size, new.size, [base64.b64decode(h) for h in proof["hashes"]],
            old.root_hash, new.root_hash,
        )  # fmt: skip
    except (MerkleError, KeyError, ValueError) as err:
        raise HistoryChanged(
            f"the log at {new.size} leaves does not extend the one verified at {old.size}: "
            f"history was rewritten ({err})"
        ) from err


async def prove_included(
    client: FederationClient, index: int, leaf: bytes, checkpoint: Checkpoint
) -> None:
    """Check that ``leaf`` is the leaf at ``index`` of the verified checkpoint."""
    proof = await client.get_json(
        "/v1/log/proof/inclusion", {"index": index, "size": checkpoint.size}
    )
    try:
        verify_inclusion(
            leaf_hash(leaf), index, checkpoint.size,
            [base64.b64decode(h) for h in proof["hashes"]], checkpoint.root_hash,
        )  # fmt: skip
    except (MerkleError, KeyError, ValueError) as err:
        raise HistoryChanged(
            f"the version at log index {index} is not the one the signed log holds ({err})"
        ) from err


async def spot_check(client: FederationClient, store: LocalStore, verified: Verified) -> int | None:
    """Prove the newest stored version below the checkpoint's size; returns its index."""
    found = store.latest_version_before(verified.checkpoint.size)
    if found is None:
        return None
    index, leaf = found
    await prove_included(client, index, leaf, verified.checkpoint)
    return index


def remember(store: LocalStore, verified: Verified) -> None:
    """Keep the verified checkpoint (and key) for the next pull's consistency check."""
    store.set_meta({META_CHECKPOINT: verified.note, META_LOG_KEY: verified.log_key})


@dataclass
class Chain:
    """The provenance of one record's current version, checked step by step."""

    record: dict[str, Any]
    steps: list[tuple[str, bool, str]] = field(default_factory=list)  # (check, ok, detail)

    @property
    def ok(self) -> bool:
        return all(ok for _, ok, _ in self.steps)

    def add(self, check: str, ok: bool, detail: str) -> None:
        self.steps.append((check, ok, detail))


async def record_chain(
    client: FederationClient, store: LocalStore, record_id: str, verified: Verified
) -> Chain:
    """Check the stored version, its cause statement, the signer's key and both inclusions."""
    found = store.record_leaf(record_id)
    if found is None:
        raise LookupError(f"record {record_id} is not in the local store; run 'hashfed pull'")
    index, leaf = found
    version = orjson.loads(leaf)
    chain = Chain(version)
    size = verified.checkpoint.size
    if index >= size:
        chain.add("version in log", False, f"leaf {index} is newer than the checkpoint ({size})")
        return chain
    try:
        await prove_included(client, index, leaf, verified.checkpoint)
        chain.add("version in log", True, f"leaf {index} is in the signed checkpoint of {size}")
    except HistoryChanged as err:
        chain.add("version in log", False, str(err))
    statement_doc = await client.get_json(f"/v1/statements/{version['cause']}")
    statement_leaf = base64.b64decode(statement_doc["leaf"])
    try:
        await prove_included(client, statement_doc["index"], statement_leaf, verified.checkpoint)
        chain.add("statement in log", True, f"leaf {statement_doc['index']}")
    except HistoryChanged as err:
        chain.add("statement in log", False, str(err))
    envelope = orjson.loads(statement_leaf)
    statement = open_envelope(
        Envelope(statement=envelope["statement"], signature=envelope["signature"])
    )
    key = await client.get_json(f"/v1/keys/{statement.key_id}")
    public: Ed25519PublicKey = decode_public_key(key["public_key"])
    chain.add("key id", key_id(public) == statement.key_id,
              f"{statement.key_id} of {key['org']!r} (the id is the key's own hash)")  # fmt: skip
    try:
        verify_statement(statement, public)
        chain.add("signature", True, f"{statement.type} signed by {statement.org!r}")
    except HashfedError as err:
        chain.add("signature", False, err.detail)
    revoked = key.get("revoked_index")
    retired = key.get("retired_index")
    active = key["added_index"] < statement_doc["index"] and all(
        x is None or statement_doc["index"] < x for x in (revoked, retired)
    )
    chain.add("key valid then", active, f"added at leaf {key['added_index']}"
              + (f", revoked at {revoked}" if revoked is not None else "")
              + (f", retired at {retired}" if retired is not None else ""))  # fmt: skip
    chain.add("contributors", True, ", ".join(version.get("contributors", [])) or "(none)")
    chain.add("state", True, f"{version.get('state')} (version {version.get('version')})"
              + (", disputed" if version.get("disputed") else ""))  # fmt: skip
    return chain
