"""The PDQ index returns exactly what brute force returns, through inserts, removals and saves."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from federation.protocol.pdq_index import (
    HASH_BYTES,
    IndexFormatError,
    PdqIndex,
    codes_from_hex,
    codes_to_hex,
)

THRESHOLDS = (0, 1, 15, 16, 31, 32, 47, 48, 63, 64, 100, 256)


def brute_force(held: set[bytes], query: bytes, threshold: int) -> list[tuple[str, int]]:
    """The reference: every held hash within ``threshold``, by Python integers."""
    q = int.from_bytes(query, "big")
    found = []
    for code in held:
        distance = (int.from_bytes(code, "big") ^ q).bit_count()
        if distance <= threshold:
            found.append((distance, code.hex()))
    return [(value, distance) for distance, value in sorted(found)]


def flip(code: bytes, bits: list[int]) -> bytes:
    as_int = int.from_bytes(code, "big")
    for bit in bits:
        as_int ^= 1 << bit
    return as_int.to_bytes(HASH_BYTES, "big")


def near(rng: np.random.Generator, code: bytes, distance: int) -> bytes:
    return flip(code, rng.choice(256, size=distance, replace=False).tolist())


def spread(code: bytes, per_chunk: list[int]) -> bytes:
    """``code`` with ``per_chunk[j]`` bits flipped inside 16-bit chunk ``j``."""
    bits = [16 * chunk + b for chunk, count in enumerate(per_chunk) for b in range(count)]
    return flip(code, bits)


def check_all(index: PdqIndex, held: set[bytes], queries: list[bytes]) -> None:
    assert len(index) == len(held)
    for threshold in THRESHOLDS:
        result = index.search_many(queries, threshold)
        got = result.by_query(len(queries))
        want = [brute_force(held, q, threshold) for q in queries]
        # Ties in distance are ordered by hash bytes in both.
        assert got == want, f"threshold {threshold}"


operation = st.tuples(
    st.sampled_from(["add", "remove", "add_near", "remove_absent"]),
    st.integers(min_value=1, max_value=40),
    st.integers(min_value=0, max_value=2**32 - 1),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(min_value=0, max_value=2**32 - 1),
    tail=st.integers(min_value=1, max_value=24),
    initial=st.integers(min_value=0, max_value=120),
    operations=st.lists(operation, max_size=12),
)
def test_matches_brute_force_after_random_updates(
    seed: int, tail: int, initial: int, operations: list[tuple[str, int, int]]
) -> None:
    rng = np.random.default_rng(seed)
    start = [rng.bytes(HASH_BYTES) for _ in range(initial)]
    index = PdqIndex.build(start, tail_hashes=tail)
    held = set(start)
    for kind, count, op_seed in operations:
        op_rng = np.random.default_rng(op_seed)
        pool = sorted(held)
        if kind == "add":
            batch = [op_rng.bytes(HASH_BYTES) for _ in range(count)]
            batch += pool[: count // 4]  # some already held: a set ignores them
        elif kind == "add_near" and pool:
            batch = [near(op_rng, pool[i % len(pool)], int(op_rng.integers(0, 40)))
                     for i in range(count)]  # fmt: skip
        elif kind == "remove" and pool:
            chosen = op_rng.choice(len(pool), size=min(count, len(pool)), replace=False)
            gone = [pool[i] for i in chosen]
            assert index.remove(gone) == len(set(gone))
            held -= set(gone)
            continue
        else:
            absent = [op_rng.bytes(HASH_BYTES) for _ in range(count)]
            assert index.remove(absent) == len(set(absent) & held)
            held -= set(absent)
            continue
        assert index.add(batch) == len(set(batch) - held)
        held |= set(batch)
    pool = sorted(held)
    queries = [rng.bytes(HASH_BYTES) for _ in range(3)]
    for i in range(min(len(pool), 12)):
        queries.append(near(rng, pool[i * 7 % len(pool)], int(rng.integers(0, 70))))
    check_all(index, held, queries)


def test_pigeonhole_edges_at_the_default_threshold() -> None:
    """31 bits spread as evenly as possible is found; 32 (two in every chunk) is not."""
    rng = np.random.default_rng(7)
    base = rng.bytes(HASH_BYTES)
    at_31 = spread(base, [2] * 15 + [1])
    at_32 = spread(base, [2] * 16)
    lopsided = spread(base, [16, 15] + [0] * 14)  # 31 bits in two chunks
    others = [rng.bytes(HASH_BYTES) for _ in range(2000)]
    index = PdqIndex.build([at_31, at_32, lopsided, *others])
    found = dict(index.search(base, 31))
    assert found == {at_31.hex(): 31, lopsided.hex(): 31}
    assert dict(index.search(base, 32))[at_32.hex()] == 32


def test_recall_on_planted_near_duplicates_in_a_large_index() -> None:
    """Every planted copy at distance 0..31 is found among 200,000 random hashes."""
    rng = np.random.default_rng(11)
    stored = rng.integers(0, 256, (200_000, HASH_BYTES), dtype=np.uint8)
    index = PdqIndex.build(stored, distinct=True)
    picks = rng.choice(stored.shape[0], size=640, replace=False)
    queries = []
    for number, pick in enumerate(picks.tolist()):
        distance = number % 32
        original = bytes(stored[pick])
        if number % 2:
            # Adversarial: the bits spread over chunks so no chunk holds more than 2.
            per_chunk = [2] * (distance // 2) + [distance % 2]
            per_chunk += [0] * (16 - len(per_chunk))
            rng.shuffle(per_chunk)
            queries.append(spread(original, per_chunk))
        else:
            queries.append(near(rng, original, distance))
    result = index.search_many(queries, 31).by_query(len(queries))
    for number, (pick, matches) in enumerate(zip(picks.tolist(), result, strict=True)):
        assert (bytes(stored[pick]).hex(), number % 32) in matches
    # And nothing else: random 256-bit hashes are ~128 bits apart.
    assert sum(len(m) for m in result) == len(queries)


def test_a_set_and_its_bookkeeping() -> None:
    rng = np.random.default_rng(3)
    codes = [rng.bytes(HASH_BYTES) for _ in range(50)]
    index = PdqIndex(tail_hashes=8)
    assert index.add(codes + codes[:5]) == 50
    assert index.add(codes[:10]) == 0
    assert len(index) == 50 and codes[0] in index and rng.bytes(32) not in index
    assert sorted(codes_to_hex(index.codes())) == sorted(c.hex() for c in codes)
    assert index.remove(codes[:30]) == 30
    assert index.remove(codes[:30]) == 0
    assert len(index) == 20 and codes[0] not in index
    assert index.add(codes[:3]) == 3  # removed hashes come back
    assert index.search(codes[1], 0) == [(codes[1].hex(), 0)]
    assert codes_from_hex([codes[2].hex()]).tobytes() == codes[2]
    with pytest.raises(ValueError, match="threshold"):
        index.search(codes[1], 257)


def test_small_batches_merge_into_few_segments() -> None:
    rng = np.random.default_rng(5)
    index = PdqIndex(tail_hashes=16)
    for _ in range(200):
        index.add([rng.bytes(HASH_BYTES) for _ in range(7)])
    assert len(index) == 1400
    # Sizes grow geometrically: a handful of segments, not 1400 / 16.
    assert len(index.segment_sizes) <= 12
    assert sum(index.segment_sizes) == 1400


def test_removing_most_of_a_segment_compacts_it() -> None:
    rng = np.random.default_rng(9)
    codes = [rng.bytes(HASH_BYTES) for _ in range(1000)]
    index = PdqIndex.build(codes)
    index.remove(codes[:600])
    assert index.segment_sizes == [400, 0]
    assert sorted(codes_to_hex(index.codes())) == sorted(c.hex() for c in codes[600:])


def test_save_and_load_round_trip(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    codes = [rng.bytes(HASH_BYTES) for _ in range(300)]
    index = PdqIndex.build(codes[:200], tail_hashes=32)
    index.add(codes[200:220])
    index.remove(codes[:10])
    folder = tmp_path / "index"
    index.save(folder, {"indexed_idx": 42})
    assert folder.stat().st_mode & 0o777 == 0o700  # private, like the store
    assert {p.stat().st_mode & 0o777 for p in folder.iterdir()} == {0o600}
    queries = [near(rng, c, 20) for c in codes[:40]]
    for mmap in (True, False):
        loaded, meta = PdqIndex.load(folder, mmap=mmap)
        assert meta == {"indexed_idx": 42}
        assert len(loaded) == len(index) == 210
        assert loaded.search_many(queries, 31).by_query(40) == index.search_many(
            queries, 31
        ).by_query(40)
    # A second save writes only what changed, and deletes what is no longer named.
    loaded, _ = PdqIndex.load(folder)
    before = {p.name for p in folder.iterdir()}
    loaded.remove(codes[10:12])
    loaded.add(codes[220:230])
    loaded.save(folder, {"indexed_idx": 43})
    after = {p.name for p in folder.iterdir()}
    assert {n for n in before if ".codes." in n} == {n for n in after if ".codes." in n}
    assert len(after) == len(before)
    again, meta = PdqIndex.load(folder)
    assert meta == {"indexed_idx": 43} and len(again) == 218
    assert sorted(codes_to_hex(again.codes())) == sorted(codes_to_hex(loaded.codes()))


def test_an_unusable_saved_index_is_reported(tmp_path: Path) -> None:
    with pytest.raises(IndexFormatError):
        PdqIndex.load(tmp_path / "missing")
    folder = tmp_path / "index"
    PdqIndex.build([bytes(32)]).save(folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    (folder / "manifest.json").write_text(json.dumps({**manifest, "version": 99}))
    with pytest.raises(IndexFormatError, match="another format"):
        PdqIndex.load(folder)
    (folder / "manifest.json").write_text("{not json")
    with pytest.raises(IndexFormatError):
        PdqIndex.load(folder)
