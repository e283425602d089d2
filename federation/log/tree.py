"""The event log as an RFC 9162 Merkle tree, stored as tiles of 256 hashes.

Layout (as in C2SP tlog-tiles): level 0 holds leaf hashes; an entry of level
L is the hash of a complete subtree of 256**L leaves. Tile (L, k) holds level
L's entries [256k, 256k + 256); only the rightmost tile of a level is partial,
and tiles only ever grow, so every past tree size stays provable.

- Appending n leaves rewrites at most one partial tile per level and inserts
  about n / 256 new rows: O(n + log n) hashing, O(n / 256 + log n) rows.
- Any aligned subtree hash comes from one tile (a subtree of height h lives in
  level h // 8 as 2**(h % 8) consecutive entries), so a proof in a
  10,000,000-leaf log reads at most a couple of tiles per level: O(log n).

The hashing rules and proof algorithms are the pure functions of
:mod:`federation.protocol.merkle`; this module only says where hashes live.
"""

from __future__ import annotations

import functools
import hashlib
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence

from sqlalchemy import Select, and_, bindparam, insert, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from federation.protocol.merkle import (
    EMPTY_ROOT,
    HASH_SIZE,
    CompactRange,
    aligned_pieces,
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    root_hash,
)
from federation.store.reads import PointReads
from federation.store.schema import tiles

TILE_HEIGHT = 8
TILE_WIDTH = 1 << TILE_HEIGHT

TileKey = tuple[int, int]


def edge_tile_keys(size: int) -> list[TileKey]:
    """The partial tiles at the right edge of a tree of ``size`` leaves."""
    keys = []
    level, count = 0, size
    while count:
        if count % TILE_WIDTH:
            keys.append((level, count // TILE_WIDTH))
        count //= TILE_WIDTH
        level += 1
    return keys


def extend_tiles(
    size: int, edges: Mapping[TileKey, bytes], new_leaf_hashes: Sequence[bytes]
) -> dict[TileKey, bytes]:
    """The tiles that change when ``new_leaf_hashes`` are appended to a tree of ``size``.

    ``edges`` holds the current partial tiles (see :func:`edge_tile_keys`).
    Pure: returns the new full contents of every tile written.
    """
    changed: dict[TileKey, bytes] = {}
    level, count = 0, size
    new = list(new_leaf_hashes)
    while new:
        tile, offset = divmod(count, TILE_WIDTH)
        buf = bytearray(edges.get((level, tile), b"") if offset else b"")
        if len(buf) != offset * HASH_SIZE:
            raise ValueError(
                f"tile ({level}, {tile}) holds {len(buf)} bytes, expected {offset * 32}"
            )
        completed: list[bytes] = []
        pos = 0
        while pos < len(new):
            take = min(TILE_WIDTH - offset, len(new) - pos)
            buf += b"".join(new[pos : pos + take])
            pos += take
            changed[(level, tile)] = bytes(buf)
            if offset + take == TILE_WIDTH:
                completed.append(root_hash(_split_hashes(buf)))
                tile, offset, buf = tile + 1, 0, bytearray()
            else:
                offset += take
        new = completed
        count //= TILE_WIDTH
        level += 1
    return changed


def _split_hashes(buf: bytes | bytearray) -> list[bytes]:
    return [bytes(buf[i : i + HASH_SIZE]) for i in range(0, len(buf), HASH_SIZE)]


def subtree_tile(start: int, end: int) -> tuple[TileKey, int, int]:
    """Where an aligned power-of-two subtree's hash lives: (tile, first entry, entry count)."""
    height = (end - start).bit_length() - 1
    level, rest = divmod(height, TILE_HEIGHT)
    index = start >> (TILE_HEIGHT * level)
    tile, offset = divmod(index, TILE_WIDTH)
    return (level, tile), offset, 1 << rest


def subtree_hash_from(tile_bytes: Callable[[TileKey], bytes]) -> Callable[[int, int], bytes]:
    """A ``subtree_hash(start, end)`` for the proof functions, reading hashes from tiles."""

    def subtree_hash(start: int, end: int) -> bytes:
        key, offset, count = subtree_tile(start, end)
        data = tile_bytes(key)
        entries = data[offset * HASH_SIZE : (offset + count) * HASH_SIZE]
        if len(entries) != count * HASH_SIZE:
            raise LookupError(f"tile {key} lacks entries {offset}..{offset + count - 1}")
        return entries if count == 1 else root_hash(_split_hashes(entries))

    return subtree_hash


def _needed_tiles(run: Callable[[Callable[[int, int], bytes]], object]) -> set[TileKey]:
    """Which tiles a proof computation reads (its control flow ignores hash values)."""
    needed: set[TileKey] = set()

    def record(start: int, end: int) -> bytes:
        needed.add(subtree_tile(start, end)[0])
        return b"\x00" * HASH_SIZE

    run(record)
    return needed


class MerkleTree:
    """The tree over the ``log`` table's leaves, read and extended through one connection."""

    def __init__(self, conn: AsyncConnection) -> None:
        self.conn = conn
        self._tiles: dict[TileKey, bytes] = {}
        self._edges: frozenset[TileKey] = frozenset()  # the stored edge tiles load_edges read
        self._edges_size: int | None = None  # the size they are the edges of

    async def _load(self, keys: Iterable[TileKey]) -> None:
        missing = [k for k in keys if k not in self._tiles]
        if not missing:
            return
        condition = or_(*(and_(tiles.c.level == lv, tiles.c.idx == ix) for lv, ix in missing))
        rows = await self.conn.execute(
            select(tiles.c.level, tiles.c.idx, tiles.c.hashes).where(condition)
        )
        for row in rows:
            self._tiles[(int(row.level), int(row.idx))] = bytes(row.hashes)

    def _tile(self, key: TileKey) -> bytes:
        return self._tiles.get(key, b"")

    async def append(self, size: int, leaves: Sequence[bytes]) -> bytes:
        """Add ``leaves`` (their bytes) after ``size`` leaves; returns the new root."""
        if not leaves:
            return await self.root(size)
        await self.load_edges(size)
        changed, root = self.extend(size, leaves)
        await self.write(changed)
        return root

    async def load_edges(self, size: int) -> None:
        """Read the partial tiles at the right edge of the tree of ``size`` leaves.

        That is all :meth:`extend` reads: an appender loads them first, then
        computes the new tiles while its other writes are under way.
        """
        keys = edge_tile_keys(size)
        await self._load(keys)
        self._edges = frozenset(k for k in keys if k in self._tiles)
        self._edges_size = size

    def extend(self, size: int, leaves: Sequence[bytes]) -> tuple[dict[TileKey, bytes], bytes]:
        """The tiles ``leaves`` change and the new root, from the edges :meth:`load_edges` read.

        Pure computation on what is loaded; the tiles are kept for the root
        and written by :meth:`write`. ``size`` must be the size the edges
        were loaded for.
        """
        if size != self._edges_size:
            raise ValueError(f"extend({size}) on edges loaded for size {self._edges_size}")
        changed = extend_tiles(size, self._tiles, [leaf_hash(leaf) for leaf in leaves])
        self._tiles.update(changed)
        new_size = size + len(leaves)
        # The root's pieces all lie in the new size's edge tiles: tiles that grew
        # here, or edges of ``size`` that did not (see load_edges).
        subtree_hash = subtree_hash_from(self._tile)
        pieces = aligned_pieces(0, new_size)
        return changed, CompactRange(new_size, [subtree_hash(a, b) for a, b in pieces]).root()

    async def write(self, changed: Mapping[TileKey, bytes]) -> None:
        """Store the tiles :meth:`extend` returned: the edges it grew, and new ones."""
        inserts = []
        for (lv, ix), data in changed.items():
            if (lv, ix) in self._edges:
                await self.conn.execute(
                    update(tiles)
                    .where(and_(tiles.c.level == lv, tiles.c.idx == ix))
                    .values(hashes=data)
                )
            else:
                inserts.append({"level": lv, "idx": ix, "hashes": data})
        if inserts:
            await self.conn.execute(insert(tiles), inserts)

    async def root(self, size: int) -> bytes:
        """The root hash of the first ``size`` leaves."""
        if size == 0:
            return EMPTY_ROOT
        pieces = aligned_pieces(0, size)
        await self._load(subtree_tile(a, b)[0] for a, b in pieces)
        subtree_hash = subtree_hash_from(self._tile)
        return CompactRange(size, [subtree_hash(a, b) for a, b in pieces]).root()

    async def inclusion_proof(self, index: int, size: int) -> list[bytes]:
        """Audit path of leaf ``index`` in the tree of ``size`` leaves."""
        await self._load(_needed_tiles(lambda h: inclusion_proof(index, size, h)))
        return inclusion_proof(index, size, subtree_hash_from(self._tile))

    async def consistency_proof(self, size1: int, size2: int) -> list[bytes]:
        """Proof that the tree of ``size1`` leaves is a prefix of the tree of ``size2``."""
        await self._load(_needed_tiles(lambda h: consistency_proof(size1, size2, h)))
        return consistency_proof(size1, size2, subtree_hash_from(self._tile))


# ---------------------------------------------------------------- serving proofs

# How many tiles a process keeps. Upper tiles (level >= 1) cover 65,536
# leaves each: 4,096 of them serve a 268M-leaf log, at 16 KiB each (entries
# and inner nodes). Level-0 tiles are the leaves' own: only the recent ones
# (and the right edge, which every proof reads) come back often.
MAX_UPPER_TILES = 4_096
MAX_LEAF_TILES = 1_024

TileFetch = Callable[[Sequence[TileKey]], Awaitable[Mapping[TileKey, bytes]]]


class TileTree:
    """One tile's entries and every complete aligned node above them, inside the tile.

    ``levels[r]`` holds the hashes of the aligned runs of ``2**r`` entries, so
    any subtree hash a proof asks of this tile is a slice, not a re-hash.
    A partial tile gets the nodes its entries complete; they never change,
    since tiles only grow.
    """

    __slots__ = ("count", "levels")

    def __init__(self, entries: bytes) -> None:
        self.count = len(entries) // HASH_SIZE
        levels = [entries[: self.count * HASH_SIZE]]
        sha256, width = hashlib.sha256, 2 * HASH_SIZE
        while len(levels[-1]) >= width:
            below = levels[-1]
            pairs = range(0, len(below) // width * width, width)
            levels.append(
                b"".join([sha256(b"\x01" + below[i : i + width]).digest() for i in pairs])
            )
        self.levels = levels

    def node(self, offset: int, count: int) -> bytes:
        """The hash of entries ``[offset, offset + count)``, an aligned power of two."""
        height = count.bit_length() - 1
        at = (offset >> height) * HASH_SIZE
        value = self.levels[height][at : at + HASH_SIZE] if height < len(self.levels) else b""
        if len(value) != HASH_SIZE:
            raise LookupError(f"tile lacks entries {offset}..{offset + count - 1}")
        return value


class TileCache:
    """Tiles read for proofs, kept per process (least recently used go first).

    Safe without invalidation: tiles only grow (a tile's first k entries
    never change once written), and a cached tile is used only when it holds
    every entry a proof needs; a shorter copy of a growing tile is read again.
    Only tiles read from committed data are cached, never those an append
    transaction is writing.
    """

    def __init__(self, upper: int = MAX_UPPER_TILES, leaves: int = MAX_LEAF_TILES) -> None:
        self._limits = (leaves, upper)
        self._tiles: tuple[OrderedDict[TileKey, TileTree], ...] = (OrderedDict(), OrderedDict())

    def get(self, key: TileKey, entries: int) -> TileTree | None:
        """The cached tile if it holds at least ``entries`` entries."""
        tiles = self._tiles[key[0] > 0]
        tree = tiles.get(key)
        if tree is None or tree.count < entries:
            return None
        tiles.move_to_end(key)
        return tree

    def put(self, key: TileKey, tree: TileTree) -> None:
        upper = key[0] > 0
        tiles = self._tiles[upper]
        tiles[key] = tree
        tiles.move_to_end(key)
        while len(tiles) > self._limits[upper]:
            tiles.popitem(last=False)

    def __len__(self) -> int:
        return sum(len(t) for t in self._tiles)


def _needed_entries(run: Callable[[Callable[[int, int], bytes]], object]) -> dict[TileKey, int]:
    """For each tile a proof computation reads, how many of its entries it needs."""
    needed: dict[TileKey, int] = {}

    def record(start: int, end: int) -> bytes:
        key, offset, count = subtree_tile(start, end)
        needed[key] = max(needed.get(key, 0), offset + count)
        return b"\x00" * HASH_SIZE

    run(record)
    return needed


TILE = select(tiles.c.hashes).where(
    tiles.c.level == bindparam("level"), tiles.c.idx == bindparam("idx")
)


@functools.cache
def _tiles_query(count: int) -> Select[tuple[int, int, bytes]]:
    """The tiles at ``count`` (level, idx) pairs bound as l0, i0, l1, i1, …"""
    return select(tiles.c.level, tiles.c.idx, tiles.c.hashes).where(
        or_(
            *(
                and_(tiles.c.level == bindparam(f"l{n}"), tiles.c.idx == bindparam(f"i{n}"))
                for n in range(count)
            )
        )
    )


def point_fetch(point: PointReads) -> TileFetch:
    """Fetch tiles in one point read (with the cache, a proof usually misses one tile)."""

    async def fetch(keys: Sequence[TileKey]) -> dict[TileKey, bytes]:
        if len(keys) == 1:
            ((level, idx),) = keys
            row = await point.first(TILE, level=level, idx=idx)
            return {} if row is None else {(level, idx): bytes(row[0])}
        params = {}
        for n, (level, idx) in enumerate(keys):
            params[f"l{n}"], params[f"i{n}"] = level, idx
        rows = await point.all(_tiles_query(len(keys)), **params)
        return {(int(level), int(idx)): bytes(data) for level, idx, data in rows}

    return fetch


class ProofTiles:
    """Proofs from cached tiles, reading only the missing ones (in one fetch)."""

    def __init__(self, fetch: TileFetch, cache: TileCache) -> None:
        self.fetch = fetch
        self.cache = cache

    async def _trees(self, needed: Mapping[TileKey, int]) -> dict[TileKey, TileTree]:
        trees: dict[TileKey, TileTree] = {}
        missing = []
        for key, entries in needed.items():
            tree = self.cache.get(key, entries)
            if tree is None:
                missing.append(key)
            else:
                trees[key] = tree
        if missing:
            fetched = await self.fetch(missing)
            for key in missing:
                tree = TileTree(fetched.get(key, b""))
                if tree.count < needed[key]:
                    raise LookupError(f"tile {key} lacks entries below {needed[key]}")
                self.cache.put(key, tree)
                trees[key] = tree
        return trees

    @staticmethod
    def _subtree_hash(trees: Mapping[TileKey, TileTree]) -> Callable[[int, int], bytes]:
        def subtree_hash(start: int, end: int) -> bytes:
            key, offset, count = subtree_tile(start, end)
            return trees[key].node(offset, count)

        return subtree_hash

    async def inclusion_proof(self, index: int, size: int) -> tuple[bytes, list[bytes]]:
        """(leaf hash, audit path) of leaf ``index`` in the tree of ``size`` leaves.

        The leaf hash comes from the leaf's level-0 tile, which the tree's
        root is built from: a client checks it against the signed root.
        """
        needed = _needed_entries(lambda h: inclusion_proof(index, size, h))
        own = (0, index // TILE_WIDTH)
        needed[own] = max(needed.get(own, 0), index % TILE_WIDTH + 1)
        trees = await self._trees(needed)
        subtree_hash = self._subtree_hash(trees)
        return subtree_hash(index, index + 1), inclusion_proof(index, size, subtree_hash)

    async def consistency_proof(self, size1: int, size2: int) -> list[bytes]:
        """Proof that the tree of ``size1`` leaves is a prefix of the tree of ``size2``."""
        needed = _needed_entries(lambda h: consistency_proof(size1, size2, h))
        trees = await self._trees(needed)
        return consistency_proof(size1, size2, self._subtree_hash(trees))
