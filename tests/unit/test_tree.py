"""Merkle tiles: roots and proofs from tiles agree with the reference functions."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from federation.log.tree import (
    TILE_WIDTH,
    MerkleTree,
    edge_tile_keys,
    extend_tiles,
    subtree_hash_from,
    subtree_tile,
)
from federation.protocol.merkle import (
    CompactRange,
    aligned_pieces,
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    root_hash,
    verify_consistency,
    verify_inclusion,
)
from federation.store.db import Database


def build(batches: list[int]) -> tuple[dict[tuple[int, int], bytes], list[bytes]]:
    store: dict[tuple[int, int], bytes] = {}
    hashes: list[bytes] = []
    for n in batches:
        new = [leaf_hash(f"leaf {len(hashes) + i}".encode()) for i in range(n)]
        edges = {k: store[k] for k in edge_tile_keys(len(hashes)) if k in store}
        store.update(extend_tiles(len(hashes), edges, new))
        hashes.extend(new)
    return store, hashes


def tile_root(store: dict[tuple[int, int], bytes], size: int) -> bytes:
    sub = subtree_hash_from(lambda k: store.get(k, b""))
    return CompactRange(size, [sub(a, b) for a, b in aligned_pieces(0, size)]).root()


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=700), min_size=1, max_size=6))
def test_tiles_give_the_reference_root_at_every_batch_boundary(batches: list[int]) -> None:
    store, hashes = build(batches)
    size = 0
    for n in batches:
        size += n
        assert tile_root(store, size) == root_hash(hashes[:size])


def test_tiles_cover_three_levels() -> None:
    size = TILE_WIDTH * TILE_WIDTH + 3 * TILE_WIDTH + 5  # reaches level 2
    store, hashes = build([size // 3, size // 3, size - 2 * (size // 3)])
    assert (2, 0) in store and len(store[(2, 0)]) == 32
    assert tile_root(store, size) == root_hash(hashes)
    # Past sizes stay provable: tiles only grow.
    for past in (1, 255, 256, 257, 65536, 65537, size - 1):
        assert tile_root(store, past) == root_hash(hashes[:past])


@pytest.mark.parametrize("size", [1, 2, 255, 256, 257, 1000, 70000])
def test_proofs_from_tiles_verify(size: int) -> None:
    store, hashes = build([size])
    sub = subtree_hash_from(lambda k: store.get(k, b""))
    root = root_hash(hashes)
    rng = random.Random(size)
    for index in {0, size - 1, *(rng.randrange(size) for _ in range(20))}:
        verify_inclusion(hashes[index], index, size, inclusion_proof(index, size, sub), root)
    for old in {1, size, *(rng.randrange(1, size + 1) for _ in range(10))}:
        proof = consistency_proof(old, size, sub)
        verify_consistency(old, size, proof, root_hash(hashes[:old]), root)


def test_subtree_tile_placement() -> None:
    assert subtree_tile(0, 1) == ((0, 0), 0, 1)
    assert subtree_tile(256, 512) == ((1, 0), 1, 1)
    assert subtree_tile(512, 1024) == ((1, 0), 2, 2)
    assert subtree_tile(65536 * 3, 65536 * 4) == ((2, 0), 3, 1)
    assert subtree_tile(300, 301) == ((0, 1), 44, 1)


def test_edge_tile_keys() -> None:
    assert edge_tile_keys(0) == []
    assert edge_tile_keys(256) == [(1, 0)]
    assert edge_tile_keys(257) == [(0, 1), (1, 0)]
    assert edge_tile_keys(65536) == [(2, 0)]


async def test_an_append_computes_its_root_from_the_edge_tiles_alone(db: Database) -> None:
    """LogBatch.flush reads the edge tiles first, then computes while inserts run.

    Each batch starts from a fresh MerkleTree that has read nothing but the
    edges of the current size (as an appender in another worker would); the
    root it computes from them alone, and the tiles it writes, must give the
    reference root. The batches cross tile boundaries on levels 0, 1 and 2.
    """
    leaves: list[bytes] = []
    for n in [1, 254, 1, 256, 300, 65_000, 1, 233, 70_000]:
        new = [f"leaf {len(leaves) + i}".encode() for i in range(n)]
        async with db.appending() as (conn, _):
            tree = MerkleTree(conn)
            await tree.load_edges(len(leaves))
            changed, root = tree.extend(len(leaves), new)
            await tree.write(changed)
        leaves.extend(new)
        assert root == root_hash([leaf_hash(leaf) for leaf in leaves])
        async with db.reading() as conn:
            assert await MerkleTree(conn).root(len(leaves)) == root  # as stored
    async with db.reading() as conn:
        tree = MerkleTree(conn)
        await tree.load_edges(len(leaves) - 1)
        with pytest.raises(ValueError, match="edges loaded for size"):
            tree.extend(len(leaves), [b"one more"])  # not the size its edges are of
