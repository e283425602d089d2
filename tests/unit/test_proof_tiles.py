"""Proofs served from cached tiles agree with the reference proofs, as the log grows."""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence

import pytest

from federation.log.tree import (
    ProofTiles,
    TileCache,
    TileKey,
    TileTree,
    edge_tile_keys,
    extend_tiles,
    subtree_hash_from,
)
from federation.protocol.merkle import (
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    root_hash,
    verify_consistency,
    verify_inclusion,
)


class GrowingLog:
    """Tiles in a dict, as the database holds them; counts the tiles each fetch reads."""

    def __init__(self) -> None:
        self.tiles: dict[TileKey, bytes] = {}
        self.hashes: list[bytes] = []
        self.fetched: list[TileKey] = []

    def append(self, n: int) -> None:
        new = [leaf_hash(b"leaf %d" % (len(self.hashes) + i)) for i in range(n)]
        edges = {k: self.tiles[k] for k in edge_tile_keys(len(self.hashes)) if k in self.tiles}
        self.tiles.update(extend_tiles(len(self.hashes), edges, new))
        self.hashes.extend(new)

    async def fetch(self, keys: Sequence[TileKey]) -> Mapping[TileKey, bytes]:
        self.fetched.extend(keys)
        return {k: self.tiles[k] for k in keys if k in self.tiles}

    def reference(self) -> ProofTiles:
        return ProofTiles(self.fetch, TileCache())


def test_tile_tree_nodes_are_the_subtree_hashes() -> None:
    log = GrowingLog()
    log.append(256 + 100)
    full, partial = TileTree(log.tiles[(0, 0)]), TileTree(log.tiles[(0, 1)])
    assert full.count == 256 and partial.count == 100
    assert full.node(0, 256) == root_hash(log.hashes[:256])
    assert full.node(64, 64) == root_hash(log.hashes[64:128])
    assert partial.node(0, 64) == root_hash(log.hashes[256:320])
    assert partial.node(96, 4) == root_hash(log.hashes[352:356])
    with pytest.raises(LookupError):
        partial.node(64, 64)  # entries 64..127 are not all there yet
    with pytest.raises(LookupError):
        partial.node(100, 1)


@pytest.mark.parametrize("size", [1, 2, 255, 256, 257, 1000, 70_000])
async def test_proofs_match_the_reference(size: int) -> None:
    log = GrowingLog()
    log.append(size)
    tiles = log.reference()
    reference = subtree_hash_from(lambda k: log.tiles.get(k, b""))
    root = root_hash(log.hashes)
    rng = random.Random(size)
    for index in {0, size - 1, *(rng.randrange(size) for _ in range(30))}:
        leaf, proof = await tiles.inclusion_proof(index, size)
        assert leaf == log.hashes[index]
        assert proof == inclusion_proof(index, size, reference)
        verify_inclusion(leaf, index, size, proof, root)
    for old in {1, size, *(rng.randrange(1, size + 1) for _ in range(15))}:
        proof = await tiles.consistency_proof(old, size)
        assert proof == consistency_proof(old, size, reference)
        verify_consistency(old, size, proof, root_hash(log.hashes[:old]), root)


async def test_a_cached_tile_that_grew_is_read_again() -> None:
    log = GrowingLog()
    cache = TileCache()
    tiles = ProofTiles(log.fetch, cache)
    rng = random.Random(7)
    for step in (1, 3, 250, 2, 700, 65_000, 300, 1):
        log.append(step)
        size = len(log.hashes)
        root = root_hash(log.hashes)
        for index in {size - 1, rng.randrange(size)}:
            leaf, proof = await tiles.inclusion_proof(index, size)
            verify_inclusion(leaf, index, size, proof, root)
        old = rng.randrange(1, size + 1)
        proof = await tiles.consistency_proof(old, size)
        verify_consistency(old, size, proof, root_hash(log.hashes[:old]), root)
    # Older sizes stay provable from the cached, longer tiles.
    size = len(log.hashes)
    for past in (1, 5, 256, 1000, size - 2):
        leaf, proof = await tiles.inclusion_proof(past - 1, past)
        verify_inclusion(leaf, past - 1, past, proof, root_hash(log.hashes[:past]))


async def test_cached_tiles_are_not_read_again() -> None:
    log = GrowingLog()
    log.append(70_000)
    tiles = log.reference()
    await tiles.inclusion_proof(12_345, 70_000)
    first = len(log.fetched)
    assert first >= 2
    log.fetched.clear()
    await tiles.inclusion_proof(12_346, 70_000)  # same tiles, all cached
    assert log.fetched == []
    await tiles.inclusion_proof(40_000, 70_000)  # only its own level-0 tile is new
    assert log.fetched == [(0, 40_000 // 256)]


async def test_a_missing_tile_is_an_error_not_a_wrong_proof() -> None:
    log = GrowingLog()
    log.append(1000)
    del log.tiles[(0, 1)]
    with pytest.raises(LookupError):
        await log.reference().inclusion_proof(300, 1000)


def test_cache_limits_evict_the_least_recently_used() -> None:
    log = GrowingLog()
    log.append(4 * 256)
    cache = TileCache(upper=1, leaves=2)
    trees = {k: TileTree(v) for k, v in log.tiles.items()}
    for key in [(0, 0), (0, 1), (0, 2)]:
        cache.put(key, trees[key])
    assert cache.get((0, 0), 1) is None  # evicted
    assert cache.get((0, 1), 256) is trees[(0, 1)]
    cache.put((0, 3), trees[(0, 3)])  # evicts (0, 2), used less recently than (0, 1)
    assert cache.get((0, 2), 1) is None and cache.get((0, 1), 1) is not None
    cache.put((1, 0), trees[(1, 0)])  # upper tiles have their own room
    assert cache.get((1, 0), 4) is trees[(1, 0)] and len(cache) == 3
    assert cache.get((1, 0), 5) is None  # holds 4 entries, not 5
