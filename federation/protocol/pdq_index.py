"""An exact Hamming range search over 256-bit PDQ hashes: multi-index hashing.

:class:`PdqIndex` answers "every stored hash within distance ``t`` of ``q``"
exactly, with no missed match at any threshold. It is shared by the member's
``hashfed match`` and the server's ``POST /v1/match``.

How (Norouzi et al., *Fast search in Hamming space with multi-index
hashing*): a hash is cut into 16 chunks of 16 bits, and each chunk position
has a table from chunk value to the hashes holding it. If two hashes differ in
at most ``t`` bits, then by pigeonhole some chunk differs in at most
``t // 16`` bits; so probing, in every table, the query's chunk value and all
values within ``t // 16`` bits of it finds every candidate, which is then
verified on the whole hash. At the PDQ threshold of 31 that is 17 probes per
table, 272 in all, each bucket holding ``n / 65536`` hashes on average; above
63 the probes would outnumber the hashes and a segment is scanned instead.

Memory per hash: the hash (32 bytes) plus, per table, a 24-bit position (16
tables x 3 bytes = 48), about 80 bytes; plus 4 MiB of bucket offsets per
segment. The index keeps no record ids: a record's id follows from its value
(:func:`federation.protocol.signals.record_id`).

Updates are incremental, as in a log-structured merge tree: new hashes go to
a small *tail* that is scanned; a full tail becomes an immutable indexed
*segment*; segments of similar size are merged, so a hash is rewritten about
``log2(n)`` times over its life and an update never rebuilds the whole index.
A removal marks the hash dead in its segment; merges drop dead hashes.

The index holds a *set* of hashes: adding a hash it holds changes nothing.
It is not thread-safe: one writer, or readers only.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

__all__ = [
    "HASH_BYTES",
    "MAX_SEGMENT_HASHES",
    "IndexFormatError",
    "PdqIndex",
    "SearchResult",
    "codes_from_hex",
    "codes_to_hex",
]

HASH_BYTES = 32  # 256 bits
HASH_BITS = HASH_BYTES * 8
CHUNKS = 16  # tables; pigeonhole gives 17 probes per table at t <= 31
CHUNK_BITS = HASH_BITS // CHUNKS
BUCKETS = 1 << CHUNK_BITS
# Positions inside a segment are stored in 24 bits (16 low + 8 high).
MAX_SEGMENT_HASHES = 1 << 24
DEFAULT_TAIL_HASHES = 4096  # scanned per query: ~30 µs
# Merge the newest segment into the one before it while that one is at most
# this many times larger: segment sizes then grow geometrically.
MERGE_RATIO = 2
# Flip radius per chunk beyond which scanning a segment is cheaper than probing.
MAX_PROBE_RADIUS = 3
# Candidates expanded at once by a batch search (bounds temporary memory, ~100 MB).
CANDIDATES_PER_STEP = 500_000
SCAN_CELLS_PER_STEP = 1_000_000  # query x hash pairs compared at once by a scan
FORMAT = "hashfed-pdq-index"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"

U8 = npt.NDArray[np.uint8]
U16 = npt.NDArray[np.uint16]
U32 = npt.NDArray[np.uint32]
U64 = npt.NDArray[np.uint64]
I64 = npt.NDArray[np.int64]
Bools = npt.NDArray[np.bool_]


class IndexFormatError(Exception):
    """A saved index cannot be read (missing, damaged, or of another format)."""


def codes_from_hex(values: Iterable[str]) -> U8:
    """Normalised PDQ values (64 hex characters each) as an ``(n, 32)`` array of bytes."""
    joined = "".join(values)
    if len(joined) % (2 * HASH_BYTES):
        raise ValueError("every PDQ value must be 64 hexadecimal characters")
    return np.frombuffer(bytes.fromhex(joined), dtype=np.uint8).reshape(-1, HASH_BYTES).copy()


def codes_to_hex(codes: U8) -> list[str]:
    """An ``(n, 32)`` array of hashes as lower-case hex strings."""
    raw = np.ascontiguousarray(codes, dtype=np.uint8).tobytes()
    step = HASH_BYTES
    return [raw[i : i + step].hex() for i in range(0, len(raw), step)]


def _as_codes(codes: U8 | Sequence[bytes] | bytes) -> U8:
    if isinstance(codes, bytes):
        codes = [codes]
    if not isinstance(codes, np.ndarray):
        joined = b"".join(codes)
        if len(joined) % HASH_BYTES:
            raise ValueError(f"every hash must be {HASH_BYTES} bytes")
        return np.frombuffer(joined, dtype=np.uint8).reshape(-1, HASH_BYTES)
    if codes.dtype != np.uint8 or codes.ndim != 2 or codes.shape[1] != HASH_BYTES:
        raise ValueError(f"hashes must be an (n, {HASH_BYTES}) array of uint8")
    return np.ascontiguousarray(codes)


def _words(codes: U8) -> U64:
    """The hashes as 4 little-endian 64-bit words each (a view when possible)."""
    return np.ascontiguousarray(codes).view("<u8")


def _chunks(codes: U8) -> U16:
    """The 16 chunk values (16-bit little-endian) of each hash."""
    return np.ascontiguousarray(codes).view("<u2")


def _distances(words: U64, query_words: U64) -> npt.NDArray[np.uint16]:
    """Hamming distances between rows of ``words`` and ``query_words`` (broadcast)."""
    return _popcount_rows(np.bitwise_xor(words, query_words))


def _popcount_rows(xored: U64) -> npt.NDArray[np.uint16]:
    """Set bits along the last axis (4 words); summing columns beats ``sum(axis=-1)``."""
    bits = np.bitwise_count(xored)
    total: npt.NDArray[np.uint16] = bits[..., 0].astype(np.uint16)
    for column in range(1, bits.shape[-1]):
        total += bits[..., column]
    return total


def _voids(codes: U8) -> npt.NDArray[np.void]:
    """Each hash as one opaque 32-byte item (compared and sorted as bytes)."""
    return np.ascontiguousarray(codes).view(f"V{HASH_BYTES}").reshape(-1)


def _distinct(codes: U8) -> U8:
    """``codes`` without repeats, first occurrences in their order."""
    n = codes.shape[0]
    if n < 2:
        return codes
    # Equal hashes share their first word; sorting words is far cheaper than sorting
    # 32-byte items, and only the few rows whose first word repeats need the latter.
    first_words = _words(codes)[:, 0]
    order = np.argsort(first_words)
    same = first_words[order[1:]] == first_words[order[:-1]]
    if not same.any():
        return codes
    involved = np.zeros(n, dtype=np.bool_)
    involved[order[1:][same]] = True
    involved[order[:-1][same]] = True
    rows = np.flatnonzero(involved)
    _, first = np.unique(_voids(codes[rows]), return_index=True)
    keep = ~involved
    keep[rows[first]] = True
    return np.ascontiguousarray(codes[keep])


def _flip_masks(radius: int) -> U16:
    """Every 16-bit mask of at most ``radius`` set bits, the empty mask first."""
    masks = [0]
    for count in range(1, radius + 1):
        for bits in combinations(range(CHUNK_BITS), count):
            masks.append(sum(1 << b for b in bits))
    return np.array(masks, dtype=np.uint16)


_MASKS = [_flip_masks(r) for r in range(MAX_PROBE_RADIUS + 1)]
_TABLES = np.arange(CHUNKS, dtype=np.int64)


@dataclass
class SearchResult:
    """What a batch search found: one row per (query, stored hash) pair within the threshold.

    ``query`` holds positions in the batch of queries, ``codes`` the stored
    hashes (``(k, 32)`` bytes) and ``distances`` their Hamming distances.
    Rows are ordered by query, then distance, then hash.
    """

    query: I64
    codes: U8
    distances: npt.NDArray[np.int64]

    def __len__(self) -> int:
        return int(self.query.shape[0])

    def for_query(self, position: int) -> list[tuple[str, int]]:
        """``(hash as hex, distance)`` of every match of query ``position``, nearest first."""
        first, end = np.searchsorted(self.query, [position, position + 1])
        return self._rows(int(first), int(end))

    def by_query(self, queries: int) -> list[list[tuple[str, int]]]:
        """:meth:`for_query` of each of ``queries`` queries, in one pass."""
        bounds = np.searchsorted(self.query, np.arange(queries + 1)).tolist()
        return [self._rows(bounds[i], bounds[i + 1]) for i in range(queries)]

    def _rows(self, first: int, end: int) -> list[tuple[str, int]]:
        raw = self.codes[first:end].tobytes()
        distances = self.distances[first:end].tolist()
        return [
            (raw[i * HASH_BYTES : (i + 1) * HASH_BYTES].hex(), d) for i, d in enumerate(distances)
        ]


@dataclass
class _Segment:
    """An immutable, indexed run of hashes plus its mutable dead-marks."""

    codes: U8  # (n, 32)
    lo: U16  # (16 * n,): table j's positions, sorted by chunk value, low 16 bits
    hi: U8  # (16 * n,): the same positions, high 8 bits
    offsets: U32  # (16, 65537): table j's bucket b is lo/hi[j*n + offsets[j, b] : ... b + 1]
    alive: Bools  # (n,)
    live: int
    name: str | None = None  # file stem once saved
    alive_file: str | None = None  # the saved dead-marks, None when changed since
    words: U64 = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.words = _words(self.codes)

    @property
    def size(self) -> int:
        return int(self.codes.shape[0])

    @property
    def nbytes(self) -> int:
        return int(
            self.codes.nbytes + self.lo.nbytes + self.hi.nbytes
            + self.offsets.nbytes + self.alive.nbytes
        )  # fmt: skip

    @classmethod
    def build(cls, codes: U8) -> _Segment:
        """Index ``codes`` (distinct hashes, at most :data:`MAX_SEGMENT_HASHES`)."""
        codes = np.ascontiguousarray(codes, dtype=np.uint8)
        n = int(codes.shape[0])
        if n > MAX_SEGMENT_HASHES:
            raise ValueError(f"a segment holds at most {MAX_SEGMENT_HASHES} hashes, got {n}")
        chunks = _chunks(codes)
        lo = np.empty(CHUNKS * n, dtype=np.uint16)
        hi = np.empty(CHUNKS * n, dtype=np.uint8)
        offsets = np.zeros((CHUNKS, BUCKETS + 1), dtype=np.uint32)
        for table in range(CHUNKS):
            column = np.ascontiguousarray(chunks[:, table])
            # A stable sort of 16-bit keys is a radix sort in numpy: linear time.
            order = np.argsort(column, kind="stable")
            np.cumsum(np.bincount(column, minlength=BUCKETS), out=offsets[table, 1:])
            part = slice(table * n, (table + 1) * n)
            lo[part] = order & 0xFFFF
            hi[part] = order >> 16
        alive = np.ones(n, dtype=np.bool_)
        return cls(codes, lo, hi, offsets, alive, n)

    def live_codes(self) -> U8:
        """The hashes not marked dead, in position order."""
        if self.live == self.size:
            return np.asarray(self.codes)
        return np.asarray(self.codes[self.alive])

    def positions_of(self, codes: U8) -> I64:
        """For each hash, its live position here, or -1 (an exact probe of table 0)."""
        found = np.full(codes.shape[0], -1, dtype=np.int64)
        if not codes.shape[0] or not self.live:
            return found
        keys = _chunks(codes)[:, 0].astype(np.int64)
        starts = self.offsets[0, keys].astype(np.int64)
        lengths = self.offsets[0, keys + 1].astype(np.int64) - starts
        queries, slots = _expand(starts, lengths)
        if not slots.shape[0]:
            return found
        positions = np.take(self.lo, slots).astype(np.int64)
        positions |= np.take(self.hi, slots).astype(np.int64) << 16
        equal = np.all(np.take(self.words, positions, axis=0) == _words(codes)[queries], axis=1)
        equal &= np.take(self.alive, positions)
        found[queries[equal]] = positions[equal]
        return found

    def search(self, query_words: U64, query_chunks: U16, threshold: int) -> tuple[I64, I64, I64]:
        """(query rows, positions, distances) of live hashes within ``threshold``."""
        radius = threshold // CHUNKS
        n = self.size
        expected_candidates = CHUNKS * len(_MASKS[min(radius, MAX_PROBE_RADIUS)]) * (n / BUCKETS)
        if radius > MAX_PROBE_RADIUS or expected_candidates >= n / 2:
            return self._scan(query_words, threshold)
        masks = _MASKS[radius]
        per_query = max(int(expected_candidates), CHUNKS * len(masks))
        step = max(1, CANDIDATES_PER_STEP // per_query)
        parts = []
        for first in range(0, query_words.shape[0], step):
            part = self._probe(
                query_words[first : first + step], query_chunks[first : first + step],
                masks, threshold,
            )  # fmt: skip
            parts.append((part[0] + first, part[1], part[2]))
        return _concat(parts)

    def _probe(
        self, query_words: U64, query_chunks: U16, masks: U16, threshold: int
    ) -> tuple[I64, I64, I64]:
        n = self.size
        count = query_words.shape[0]
        probes = (query_chunks[:, :, None] ^ masks[None, None, :]).astype(np.int64)
        probes += (_TABLES * (BUCKETS + 1))[None, :, None]
        offsets = self.offsets.reshape(-1)
        starts = np.take(offsets, probes).astype(np.int64)
        lengths = np.take(offsets, probes + 1).astype(np.int64) - starts
        starts += (_TABLES * n)[None, :, None]
        per_query = lengths.reshape(count, -1).sum(axis=1)
        slots = _slots(starts.reshape(-1), lengths.reshape(-1))
        positions = np.take(self.lo, slots).astype(np.int64)
        positions |= np.take(self.hi, slots).astype(np.int64) << 16
        # Random reads of 32-byte rows: the cost of the search (np.take beats a[idx]).
        candidates = np.take(self.words, positions, axis=0)
        candidates ^= np.repeat(query_words, per_query, axis=0)
        distances = _popcount_rows(candidates)
        keep = distances <= threshold
        keep &= np.take(self.alive, positions)
        kept = np.flatnonzero(keep)
        rows = np.searchsorted(np.cumsum(per_query), kept, side="right").astype(np.int64)
        positions = positions[kept]
        # A hash close in several chunks is found in several tables: report it once.
        pairs, first = np.unique(rows * n + positions, return_index=True)
        return pairs // n, pairs % n, distances[kept][first].astype(np.int64)

    def _scan(self, query_words: U64, threshold: int) -> tuple[I64, I64, I64]:
        step = max(1, SCAN_CELLS_PER_STEP // max(self.size, 1))
        parts = []
        for first in range(0, query_words.shape[0], step):
            block = query_words[first : first + step]
            distances = _distances(self.words[None, :, :], block[:, None, :])
            hits = (distances <= threshold) & self.alive[None, :]
            rows, positions = np.nonzero(hits)
            parts.append(
                (rows.astype(np.int64) + first, positions.astype(np.int64),
                 distances[rows, positions].astype(np.int64))
            )  # fmt: skip
        return _concat(parts)


def _slots(starts: I64, lengths: I64) -> I64:
    """Ranges ``[start, start + length)`` unrolled into one array of slots."""
    total = int(lengths.sum())
    ends = np.cumsum(lengths)
    return np.arange(total, dtype=np.int64) - np.repeat(ends - lengths - starts, lengths)


def _expand(starts: I64, lengths: I64) -> tuple[I64, I64]:
    """Ranges ``[start, start + length)`` unrolled: (range number, slot) per element."""
    total = int(lengths.sum())
    owners = np.repeat(np.arange(lengths.shape[0], dtype=np.int64), lengths)
    ends = np.cumsum(lengths)
    slots = np.arange(total, dtype=np.int64) - np.repeat(ends - lengths - starts, lengths)
    return owners, slots


def _concat(parts: Sequence[tuple[I64, I64, I64]]) -> tuple[I64, I64, I64]:
    if not parts:
        empty = np.empty(0, dtype=np.int64)
        return empty, empty, empty
    if len(parts) == 1:
        return parts[0]
    return (
        np.concatenate([p[0] for p in parts]),
        np.concatenate([p[1] for p in parts]),
        np.concatenate([p[2] for p in parts]),
    )


class PdqIndex:
    """A set of PDQ hashes answering exact Hamming range queries; see the module docstring.

    ``tail_hashes`` is how many new hashes are kept unindexed (scanned)
    before they become a segment; tests make it small to exercise merging.
    """

    def __init__(self, *, tail_hashes: int = DEFAULT_TAIL_HASHES) -> None:
        if tail_hashes < 1:
            raise ValueError("tail_hashes must be at least 1")
        self.tail_hashes = tail_hashes
        self._segments: list[_Segment] = []
        self._tail: dict[bytes, None] = {}  # insertion-ordered set
        self._tail_codes: U8 | None = None  # cache of the tail as an array
        self._tail_saved: str | None = None  # file of the saved tail, None when changed

    # Building

    @classmethod
    def build(
        cls,
        codes: U8 | Sequence[bytes],
        *,
        distinct: bool = False,
        tail_hashes: int = DEFAULT_TAIL_HASHES,
    ) -> PdqIndex:
        """An index of ``codes``, built at once (faster than adding them in steps).

        ``distinct=True`` promises the hashes are already distinct (as the
        values of a store's records are), which skips de-duplication.
        """
        index = cls(tail_hashes=tail_hashes)
        array = _as_codes(codes)
        if not distinct:
            array = _distinct(array)
        for first in range(0, array.shape[0], MAX_SEGMENT_HASHES):
            index._segments.append(_Segment.build(array[first : first + MAX_SEGMENT_HASHES]))
        return index

    def __len__(self) -> int:
        return sum(s.live for s in self._segments) + len(self._tail)

    def __contains__(self, code: object) -> bool:
        if not isinstance(code, bytes) or len(code) != HASH_BYTES:
            return False
        return bool(self.contains(_as_codes(code))[0])

    @property
    def nbytes(self) -> int:
        """Bytes held by the index's arrays (hashes, tables, dead-marks, tail)."""
        tail = len(self._tail) * HASH_BYTES
        return sum(s.nbytes for s in self._segments) + tail

    @property
    def segment_sizes(self) -> list[int]:
        """Hashes (live or dead) in each segment, oldest first; then the tail's in a last entry."""
        return [s.size for s in self._segments] + [len(self._tail)]

    def contains(self, codes: U8 | Sequence[bytes]) -> Bools:
        """For each hash, whether the index holds it."""
        array = _as_codes(codes)
        found = np.zeros(array.shape[0], dtype=np.bool_)
        for segment in self._segments:
            found |= segment.positions_of(array) >= 0
        if self._tail:
            # Only rows whose first word is a tail hash's can be in the tail.
            maybe = np.isin(_words(array)[:, 0], _words(self._tail_array())[:, 0])
            for row in np.flatnonzero(maybe).tolist():
                found[row] |= bytes(array[row]) in self._tail
        return found

    def codes(self) -> U8:
        """Every hash held, as an ``(n, 32)`` array (segments first, then the tail)."""
        parts = [s.live_codes() for s in self._segments]
        parts.append(self._tail_array())
        return np.concatenate(parts) if parts else np.empty((0, HASH_BYTES), np.uint8)

    # Updating

    def add(self, codes: U8 | Sequence[bytes]) -> int:
        """Add hashes; returns how many were new (held ones and repeats are ignored)."""
        array = _as_codes(codes)
        if not array.shape[0]:
            return 0
        array = _distinct(array[~self.contains(array)])
        added = int(array.shape[0])
        if added >= self.tail_hashes:
            # A big batch (a first pull) becomes segments of its own at once.
            for first in range(0, added, MAX_SEGMENT_HASHES):
                self._segments.append(_Segment.build(array[first : first + MAX_SEGMENT_HASHES]))
                self._merge()
            return added
        self._tail.update(dict.fromkeys(bytes(row) for row in array))
        self._tail_changed()
        if len(self._tail) >= self.tail_hashes:
            self._segments.append(_Segment.build(self._tail_array()))
            self._tail.clear()
            self._tail_changed()
            self._merge()
        return added

    def remove(self, codes: U8 | Sequence[bytes]) -> int:
        """Remove hashes; returns how many were held (the others are ignored)."""
        array = _as_codes(codes)
        removed = 0
        pending = np.ones(array.shape[0], dtype=np.bool_)
        for segment in self._segments:
            if not pending.any():
                break
            positions = segment.positions_of(array)
            hit = positions >= 0
            if hit.any():
                segment.alive[positions[hit]] = False
                count = int(np.count_nonzero(hit))
                segment.live -= count
                segment.alive_file = None
                removed += count
                pending &= ~hit
        for row in array[pending]:
            key = bytes(row)
            if key in self._tail:
                del self._tail[key]
                removed += 1
                self._tail_changed()
        self._compact_sparse()
        return removed

    def _tail_changed(self) -> None:
        self._tail_codes = None
        self._tail_saved = None

    def _tail_array(self) -> U8:
        if self._tail_codes is None:
            self._tail_codes = (
                _as_codes(list(self._tail)).copy()
                if self._tail
                else np.empty((0, HASH_BYTES), np.uint8)
            )
        return self._tail_codes

    def _merge(self) -> None:
        """Merge the newest segments while the one before is not much larger."""
        segments = self._segments
        while len(segments) >= 2:
            newer, older = segments[-1], segments[-2]
            if older.live > MERGE_RATIO * newer.live:
                break
            if older.live + newer.live > MAX_SEGMENT_HASHES:
                break
            merged = np.concatenate([older.live_codes(), newer.live_codes()])
            segments[-2:] = [_Segment.build(merged)]

    def _compact_sparse(self) -> None:
        """Rebuild a segment once more than half of it is dead (keeps memory near the live set)."""
        for number, segment in enumerate(self._segments):
            if segment.size and segment.live * 2 < segment.size:
                self._segments[number] = _Segment.build(segment.live_codes())
        self._segments = [s for s in self._segments if s.size]

    # Searching

    def search(self, query: bytes | str, threshold: int) -> list[tuple[str, int]]:
        """``(hash as hex, distance)`` of every held hash within ``threshold``, nearest first."""
        code = bytes.fromhex(query) if isinstance(query, str) else query
        return self.search_many(_as_codes(code), threshold).for_query(0)

    def search_many(self, queries: U8 | Sequence[bytes], threshold: int) -> SearchResult:
        """Every (query, held hash) pair within Hamming distance ``threshold`` (inclusive)."""
        if not 0 <= threshold <= HASH_BITS:
            raise ValueError(f"threshold must be between 0 and {HASH_BITS}, got {threshold}")
        array = _as_codes(queries)
        query_words = _words(array)
        query_chunks = _chunks(array)
        rows_parts: list[I64] = []
        code_parts: list[U8] = []
        distance_parts: list[I64] = []
        for segment in self._segments:
            if not segment.live:
                continue
            rows, positions, distances = segment.search(query_words, query_chunks, threshold)
            rows_parts.append(rows)
            code_parts.append(np.asarray(segment.codes[positions]))
            distance_parts.append(distances)
        tail = self._tail_array()
        if tail.shape[0]:
            tail_words = _words(tail)
            step = max(1, SCAN_CELLS_PER_STEP // tail.shape[0])
            for first in range(0, array.shape[0], step):
                block = query_words[first : first + step]
                near = _distances(tail_words[None, :, :], block[:, None, :])
                rows, positions = np.nonzero(near <= threshold)
                rows_parts.append(rows.astype(np.int64) + first)
                code_parts.append(tail[positions])
                distance_parts.append(near[rows, positions].astype(np.int64))
        if not rows_parts:
            return SearchResult(
                np.empty(0, np.int64), np.empty((0, HASH_BYTES), np.uint8), np.empty(0, np.int64)
            )
        rows = np.concatenate(rows_parts)
        codes = np.concatenate(code_parts)
        distances = np.concatenate(distance_parts)
        # Order by query, distance, then hash bytes (stable and deterministic).
        keys: list[npt.NDArray[Any]] = [codes[:, i] for i in range(HASH_BYTES - 1, -1, -1)]
        order = np.lexsort((*keys, distances, rows))
        return SearchResult(rows[order], codes[order], distances[order])

    # Saving and loading

    def save(self, directory: str | Path, meta: Mapping[str, Any] | None = None) -> None:
        """Write the index to ``directory``, with ``meta`` (JSON-ready) in its manifest.

        Segment files are written once; later saves write only new segments,
        changed dead-marks and the tail, then replace the manifest atomically
        and delete the files it no longer names. A crash at any point leaves
        the previous manifest and its files, or the new ones.
        """
        folder = Path(directory)
        # The federation's list is for this member only, like the store (files are 0600).
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        segments = []
        for segment in self._segments:
            if segment.name is None:
                segment.name = f"seg-{secrets.token_hex(8)}"
                for part in ("codes", "lo", "hi", "offsets"):
                    _write_array(folder / f"{segment.name}.{part}.npy", getattr(segment, part))
            if segment.alive_file is None:
                segment.alive_file = f"{segment.name}.alive-{secrets.token_hex(4)}.npy"
                _write_array(folder / segment.alive_file, segment.alive)
            segments.append(
                {"name": segment.name, "size": segment.size, "live": segment.live,
                 "alive": segment.alive_file}
            )  # fmt: skip
        if self._tail_saved is None:
            self._tail_saved = f"tail-{secrets.token_hex(4)}.npy"
            _write_array(folder / self._tail_saved, self._tail_array())
        manifest = {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "chunks": CHUNKS,
            "tail_hashes": self.tail_hashes,
            "segments": segments,
            "tail": self._tail_saved,
            "meta": dict(meta or {}),
        }
        _write_bytes(folder / MANIFEST, json.dumps(manifest, indent=1).encode())
        named = {MANIFEST, self._tail_saved}
        for entry in segments:
            named.add(str(entry["alive"]))
            named.update(f"{entry['name']}.{part}.npy" for part in ("codes", "lo", "hi", "offsets"))
        for path in folder.iterdir():
            if path.name not in named and (path.suffix == ".npy" or path.name.startswith(".tmp")):
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()

    @classmethod
    def load(cls, directory: str | Path, *, mmap: bool = True) -> tuple[PdqIndex, dict[str, Any]]:
        """Read an index saved by :meth:`save`; returns it and the ``meta`` saved with it.

        With ``mmap`` the immutable arrays are mapped, not read: opening is
        instant and only the pages a search touches are read from disk.
        Raises :class:`IndexFormatError` if the index is missing or unusable.
        """
        folder = Path(directory)
        try:
            manifest = json.loads((folder / MANIFEST).read_bytes())
            if (
                manifest.get("format") != FORMAT
                or manifest.get("version") != FORMAT_VERSION
                or manifest.get("chunks") != CHUNKS
            ):
                raise IndexFormatError(f"{folder} holds an index of another format")
            index = cls(tail_hashes=int(manifest["tail_hashes"]))
            mode: Literal["r"] | None = "r" if mmap else None
            for entry in manifest["segments"]:
                name = str(entry["name"])
                codes, lo, hi, offsets = (
                    np.load(folder / f"{name}.{part}.npy", mmap_mode=mode, allow_pickle=False)
                    for part in ("codes", "lo", "hi", "offsets")
                )
                alive = np.load(folder / str(entry["alive"]), allow_pickle=False)
                segment = _Segment(codes, lo, hi, offsets, alive, int(np.count_nonzero(alive)))
                segment.name = name
                segment.alive_file = str(entry["alive"])
                _check_segment(segment, folder)
                index._segments.append(segment)
            tail = np.load(folder / str(manifest["tail"]), allow_pickle=False)
            if tail.dtype != np.uint8 or tail.ndim != 2 or tail.shape[1] != HASH_BYTES:
                raise IndexFormatError(f"{folder}: the tail is not an (n, 32) array of bytes")
            index._tail = dict.fromkeys(bytes(row) for row in tail)
            index._tail_saved = str(manifest["tail"])
            meta = manifest["meta"]
            if not isinstance(meta, dict):
                raise IndexFormatError(f"{folder}: the manifest's meta is not an object")
        except IndexFormatError:
            raise
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise IndexFormatError(f"{folder} does not hold a usable index: {exc}") from exc
        return index, meta

    def segments(self) -> Iterator[tuple[int, int]]:
        """(hashes, live hashes) of each segment, oldest first (for diagnostics)."""
        for segment in self._segments:
            yield segment.size, segment.live


def _check_segment(segment: _Segment, folder: Path) -> None:
    n = segment.size
    if (
        segment.codes.dtype != np.uint8
        or segment.codes.shape != (n, HASH_BYTES)
        or segment.lo.shape != (CHUNKS * n,)
        or segment.lo.dtype != np.uint16
        or segment.hi.shape != (CHUNKS * n,)
        or segment.hi.dtype != np.uint8
        or segment.offsets.shape != (CHUNKS, BUCKETS + 1)
        or segment.offsets.dtype != np.uint32
        or segment.alive.shape != (n,)
        or segment.alive.dtype != np.bool_
    ):
        raise IndexFormatError(f"{folder}: segment {segment.name} has arrays of the wrong shape")


def _write_array(path: Path, array: npt.NDArray[Any]) -> None:
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            np.save(fh, np.ascontiguousarray(array), allow_pickle=False)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _write_bytes(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
