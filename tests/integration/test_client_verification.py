"""Members verify the log on every pull: checkpoints, consistency, inclusion, record chains."""

from __future__ import annotations

import base64
from pathlib import Path

import orjson
import pytest
from sqlalchemy import delete, select, update

from clients.client import FederationClient
from clients.store import LocalStore
from clients.sync_feed import pull
from clients.verify import (
    META_CHECKPOINT,
    HistoryChanged,
    UntrustedCheckpoint,
    record_chain,
    verify_checkpoint,
)
from federation.log.checkpoints import CheckpointSigner
from federation.log.tree import MerkleTree
from federation.protocol.keys import generate_private_key
from federation.protocol.note import format_verifier_key
from federation.protocol.signals import record_id
from federation.store.schema import LEAF_STATEMENT, log, log_head, tiles
from tests.conftest import Federation


def items(start: int, n: int) -> list[dict[str, object]]:
    return [
        {"signal_type": "md5", "value": f"{i:032x}", "labels": ["recruitment"]}
        for i in range(start, start + n)
    ]


def log_key(fed: Federation) -> str:
    return CheckpointSigner.from_file(fed.settings.origin, fed.settings.log_key_path).verifier_key


async def test_every_pull_verifies_and_keeps_the_checkpoint(
    fed: Federation, tmp_path: Path
) -> None:
    member = await fed.admit("acme")
    with LocalStore.open(tmp_path / "store.db") as store:
        async with fed.client(member) as client:
            await client.submit(items(0, 20))
            first = await pull(client, store, log_key=log_key(fed))
            assert first.checkpoint_size > 0 and first.proved_index is not None
            assert not first.log_key_first_use
            kept = store.get_meta(META_CHECKPOINT)
            await client.submit(items(20, 20))
            second = await pull(client, store)  # the key the store trusted before
            assert second.checkpoint_size > first.checkpoint_size
            assert store.get_meta(META_CHECKPOINT) != kept


async def test_first_use_without_a_pinned_key_is_reported(fed: Federation, tmp_path: Path) -> None:
    member = await fed.admit("acme")
    with LocalStore.open(tmp_path / "store.db") as store:
        async with fed.client(member) as client:
            result = await pull(client, store)
    assert result.log_key_first_use


async def test_a_wrong_pinned_key_is_refused(fed: Federation, tmp_path: Path) -> None:
    member = await fed.admit("acme")
    impostor = format_verifier_key(fed.settings.origin, generate_private_key().public_key())
    with LocalStore.open(tmp_path / "store.db") as store:
        async with fed.client(member) as client:
            with pytest.raises(UntrustedCheckpoint):
                await pull(client, store, log_key=impostor)
        assert store.cursor is None


async def _rewrite_history(fed: Federation) -> None:
    """A malicious operator with the log key changes an old leaf and re-signs."""
    async with fed.db.writing() as conn:
        row = (
            await conn.execute(
                select(log.c.idx, log.c.leaf).where(log.c.kind != LEAF_STATEMENT)
                .order_by(log.c.idx).limit(1)
            )
        ).first()  # fmt: skip
        assert row is not None
        doc = orjson.loads(row.leaf)
        doc["labels"] = ["glorification"]
        await conn.execute(
            update(log).where(log.c.idx == row.idx)
            .values(leaf=orjson.dumps(doc, option=orjson.OPT_SORT_KEYS))
        )  # fmt: skip
        size = (await conn.execute(select(log_head.c.size))).scalar_one()
        leaves = [bytes(r.leaf) for r in await conn.execute(select(log.c.leaf).order_by(log.c.idx))]
        await conn.execute(delete(tiles))
        root = await MerkleTree(conn).append(0, leaves)
        signer = CheckpointSigner.from_file(fed.settings.origin, fed.settings.log_key_path)
        from federation.store.schema import checkpoints

        await conn.execute(
            update(checkpoints).where(checkpoints.c.size == size)
            .values(root_hash=root, note=signer.sign(size, root))
        )  # fmt: skip


async def test_a_rewritten_history_stops_the_pull(fed: Federation, tmp_path: Path) -> None:
    member = await fed.admit("acme")
    with LocalStore.open(tmp_path / "store.db") as store:
        async with fed.client(member) as client:
            await client.submit(items(0, 10))
            await pull(client, store, log_key=log_key(fed))
            await client.submit(items(10, 5))
            cursor, counts = store.cursor, store.counts()
            await _rewrite_history(fed)
            with pytest.raises(HistoryChanged, match=r"does not extend|different root"):
                await pull(client, store)
            assert (store.cursor, store.counts()) == (cursor, counts)  # untouched


async def test_record_chain(fed: Federation, tmp_path: Path) -> None:
    member = await fed.admit("acme")
    with LocalStore.open(tmp_path / "store.db") as store:
        async with fed.client(member) as client:
            await client.submit(items(0, 3))
            await pull(client, store, log_key=log_key(fed))
            verified = await verify_checkpoint(client, store, log_key(fed))
            chain = await record_chain(client, store, record_id("md5", f"{1:032x}"), verified)
    assert chain.ok, chain.steps
    checks = [c for c, _, _ in chain.steps]
    assert checks[:5] == [
        "version in log",
        "statement in log",
        "key id",
        "signature",
        "key valid then",
    ]


async def test_statements_of_others_are_visible_only_when_they_caused_visible_versions(
    fed: Federation,
) -> None:
    alpha = await fed.admit("alpha")
    beta = await fed.admit("beta")
    async with fed.client(fed.governance) as gov:
        await gov.update_policy(auto_approve=False)
    async with fed.client(alpha) as a, FederationClient(fed.url, beta) as b:
        pending = await a.submit(items(0, 1))
        assert (await a.get_json(f"/v1/statements/{pending['statement_id']}"))["index"] > 0
        from clients.errors import NotFound

        with pytest.raises(NotFound):
            await b.get_json(f"/v1/statements/{pending['statement_id']}")
        key = await b.get_json(f"/v1/keys/{alpha.key_id}")
        assert base64.b64decode(key["public_key"]) and key["org"] == "alpha"
