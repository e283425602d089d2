"""Tests of federation.protocol.merkle: shared RFC 9162 vectors, generated proofs, properties."""

from __future__ import annotations

import base64
import json
import random
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from federation.protocol.merkle import (
    EMPTY_ROOT,
    CompactRange,
    MerkleError,
    aligned_pieces,
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    node_hash,
    root_hash,
    verify_consistency,
    verify_inclusion,
)


def vectors_dir() -> Path:
    """The shared test vectors: ``../shared/vectors`` beside the repository root."""
    return Path(__file__).resolve().parents[2].parent / "shared" / "vectors"


MERKLE_VECTORS = vectors_dir() / "merkle"
CATEGORIES = (
    "invalid log size",
    "invalid leaf index",
    "wrong proof size",
    "wrong hash length",
    "root mismatch",
)
ANY_CATEGORY = frozenset(CATEGORIES)

# The reason each failing vector names in its "desc", as the categories our
# messages may start with. Several descs name a mutation rather than a reason
# (a shifted index may land in range or not), so they allow any category;
# a few upstream descs are ambiguous ("empty root" is the empty tree's root in
# one folder and an empty byte string in another) and allow both readings.
EXPECTED_REASONS: list[tuple[str, frozenset[str]]] = [
    (
        r"^(truncated proof|empty proof|removed component|inserted component"
        r"|preceding (garbage|root\d?|proof @0)|trailing (garbage|root\d?)"
        r"|sizes do not watch and proof is empty"
        r"|sizes match but proof is not empty and sizes are one)$",
        frozenset({"wrong proof size"}),
    ),
    (r"^(modified proof.*|random root|swapped roots)$", frozenset({"root mismatch"})),
    (
        r"^(wrong (leaf|root1|root2)|empty leaf|empty root and leaf)$",
        frozenset({"wrong hash length"}),
    ),
    (r"^empty root$", frozenset({"root mismatch", "wrong hash length"})),
    (
        r"^(size1 is greater than size2.*|size1 is zero.*|consistency check on empty tree.*"
        r"|sizes are equal \(zero\).*|roots do not match and sizes are zero)$",
        frozenset({"invalid log size"}),
    ),
    (
        r"^sizes match but proof is not empty and sizes are zero$",
        frozenset({"invalid log size", "wrong proof size"}),
    ),
    (
        r"^(sizes are equal \(one\) but roots are not|roots do not not match and sizes are one)$",
        frozenset({"root mismatch", "wrong hash length"}),
    ),
]

# Vectors where this module is deliberately stricter than the upstream data.
# The upstream generator writes the 12-byte placeholder "don't care 2" as both
# roots of a size-1 to size-1 proof and expects success; we refuse any hash
# that is not 32 bytes (shared/vectors/README.md: "every hash must be exactly
# 32 bytes"), since no SHA-256 tree has such a root.
STRICTER_THAN_VECTOR = {
    "consistency/additional/sizes-are-equal-one-and-proof-is-empty.json": "wrong hash length",
}


def _load(kind: str) -> list[Any]:
    paths = sorted((MERKLE_VECTORS / kind).rglob("*.json"))
    return [
        pytest.param(json.loads(path.read_text()), id=str(path.relative_to(MERKLE_VECTORS)))
        for path in paths
    ]


INCLUSION_VECTORS = _load("inclusion")
CONSISTENCY_VECTORS = _load("consistency")


def _b64(value: str) -> bytes:
    return base64.b64decode(value, validate=True)


def _proof(vector: dict[str, Any]) -> list[bytes]:
    # Upstream writes JSON null for an empty proof.
    return [_b64(item) for item in vector["proof"] or []]


def _vector_id(request: pytest.FixtureRequest) -> str:
    node = request.node
    assert isinstance(node, pytest.Function)
    return node.callspec.id


def _assert_expected_failure(
    vector_id: str, desc: str, err: MerkleError, sizes_valid: bool
) -> None:
    message = str(err)
    category = next((c for c in CATEGORIES if message.startswith(c + ":")), None)
    assert category is not None, f"message has no known category: {message!r}"
    allowed = ANY_CATEGORY
    if vector_id in STRICTER_THAN_VECTOR:
        allowed = frozenset({STRICTER_THAN_VECTOR[vector_id]})
    elif not sizes_valid:
        # Whatever the hashes, an impossible index or size is the reason
        # (the "additional" descs name the hash payload, not the check).
        allowed = frozenset({"invalid log size", "invalid leaf index"})
    else:
        for pattern, reasons in EXPECTED_REASONS:
            if re.match(pattern, desc):
                allowed = reasons
                break
    assert category in allowed, f"{desc!r} failed as {message!r}, expected one of {allowed}"


def test_vectors_are_present() -> None:
    # A missing shared/ folder must fail loudly, not parametrise zero tests.
    assert len(INCLUSION_VECTORS) == 98
    assert len(CONSISTENCY_VECTORS) == 98


@pytest.mark.parametrize("vector", INCLUSION_VECTORS)
def test_inclusion_vector(vector: dict[str, Any], request: pytest.FixtureRequest) -> None:
    args = (
        _b64(vector["leafHash"]),
        vector["leafIdx"],
        vector["treeSize"],
        _proof(vector),
        _b64(vector["root"]),
    )
    if not vector["wantErr"]:
        verify_inclusion(*args)
        return
    with pytest.raises(MerkleError) as raised:
        verify_inclusion(*args)
    sizes_valid = 0 <= vector["leafIdx"] < vector["treeSize"]
    _assert_expected_failure(_vector_id(request), vector["desc"], raised.value, sizes_valid)


@pytest.mark.parametrize("vector", CONSISTENCY_VECTORS)
def test_consistency_vector(vector: dict[str, Any], request: pytest.FixtureRequest) -> None:
    vector_id = _vector_id(request)
    args = (
        vector["size1"],
        vector["size2"],
        _proof(vector),
        _b64(vector["root1"]),
        _b64(vector["root2"]),
    )
    if not vector["wantErr"] and vector_id not in STRICTER_THAN_VECTOR:
        verify_consistency(*args)
        return
    with pytest.raises(MerkleError) as raised:
        verify_consistency(*args)
    sizes_valid = 0 < vector["size1"] <= vector["size2"]
    _assert_expected_failure(vector_id, vector["desc"], raised.value, sizes_valid)


def test_equal_sizes_with_real_roots_verify() -> None:
    # The well-formed twin of the vector we are stricter on.
    root = leaf_hash(b"one")
    verify_consistency(1, 1, [], root, root)
    verify_consistency(5, 5, [], root, root)


def _roots_vector() -> tuple[list[bytes], list[bytes]]:
    data = json.loads((MERKLE_VECTORS / "roots.json").read_text())
    leaves = [leaf_hash(bytes.fromhex(item)) for item in data["leaf_inputs_hex"]]
    roots = [bytes.fromhex(item) for item in data["root_by_tree_size_hex"]]
    return leaves, roots


def test_roots_vector() -> None:
    leaves, roots = _roots_vector()
    assert len(roots) == len(leaves) + 1 == 9
    assert roots[0] == EMPTY_ROOT
    compact = CompactRange()
    for size, expected in enumerate(roots):
        assert root_hash(leaves[:size]) == expected
        assert compact.root() == expected
        if size < len(leaves):
            compact.append(leaves[size])


def _store_answering(
    leaves: Sequence[bytes], size: int, calls: list[tuple[int, int]] | None = None
) -> Callable[[int, int], bytes]:
    """A subtree_hash that knows only what CompactRange.append reported: aligned subtrees."""
    stored: dict[tuple[int, int], bytes] = {}
    compact = CompactRange()
    for value in leaves[:size]:
        for level, index, digest in compact.append(value):
            stored[(level, index)] = digest

    def subtree_hash(start: int, end: int) -> bytes:
        width = end - start
        assert width > 0 and width & (width - 1) == 0, f"[{start}, {end}) is not a power of two"
        assert start % width == 0, f"[{start}, {end}) is not aligned"
        assert end <= size, f"[{start}, {end}) is beyond size {size}"
        if calls is not None:
            calls.append((start, end))
        return stored[(width.bit_length() - 1, start // width)]

    return subtree_hash


def test_generated_proofs_match_vector_proofs() -> None:
    # The happy-path vectors over the roots.json leaves are the proofs our
    # generators must produce, byte for byte.
    leaves, roots = _roots_vector()
    matched = 0
    for param in INCLUSION_VECTORS:
        (vector,) = param.values
        size = vector["treeSize"]
        if vector["wantErr"] or size > len(leaves) or _b64(vector["root"]) != roots[size]:
            continue
        generated = inclusion_proof(vector["leafIdx"], size, _store_answering(leaves, size))
        assert generated == _proof(vector)
        matched += 1
    for param in CONSISTENCY_VECTORS:
        (vector,) = param.values
        size1, size2 = vector["size1"], vector["size2"]
        if vector["wantErr"] or size2 > len(leaves) or _b64(vector["root2"]) != roots[size2]:
            continue
        generated = consistency_proof(size1, size2, _store_answering(leaves, size2))
        assert generated == _proof(vector)
        matched += 1
    assert matched >= 8


# Spec-literal recursive definitions from RFC 9162 section 2.1, as oracles.


def _largest_power_below(n: int) -> int:
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def _mth(hashes: Sequence[bytes]) -> bytes:
    if not hashes:
        return EMPTY_ROOT
    if len(hashes) == 1:
        return hashes[0]
    k = _largest_power_below(len(hashes))
    return node_hash(_mth(hashes[:k]), _mth(hashes[k:]))


def _path(m: int, hashes: Sequence[bytes]) -> list[bytes]:
    if len(hashes) == 1:
        return []
    k = _largest_power_below(len(hashes))
    if m < k:
        return [*_path(m, hashes[:k]), _mth(hashes[k:])]
    return [*_path(m - k, hashes[k:]), _mth(hashes[:k])]


def _subproof(m: int, hashes: Sequence[bytes], complete: bool) -> list[bytes]:
    n = len(hashes)
    if m == n:
        return [] if complete else [_mth(hashes)]
    k = _largest_power_below(n)
    if m <= k:
        return [*_subproof(m, hashes[:k], complete), _mth(hashes[k:])]
    return [*_subproof(m - k, hashes[k:], False), _mth(hashes[:k])]


MAX_SIZE = 300
LEAVES = [leaf_hash(i.to_bytes(4, "big")) for i in range(MAX_SIZE)]
ROOTS = [root_hash(LEAVES[:size]) for size in range(MAX_SIZE + 1)]


def test_root_hash_matches_rfc_definition() -> None:
    for size in range(MAX_SIZE + 1):
        assert ROOTS[size] == _mth(LEAVES[:size])


def test_compact_range_root_matches_root_hash_at_every_size() -> None:
    compact = CompactRange()
    for size in range(MAX_SIZE + 1):
        assert compact.size == size
        assert compact.root() == ROOTS[size]
        assert len(compact.peaks) == size.bit_count()
        if size < MAX_SIZE:
            compact.append(LEAVES[size])


def test_compact_range_extend_is_append_in_turn() -> None:
    for start in range(0, MAX_SIZE + 1, 7):
        for end in range(start, MAX_SIZE + 1, 5):
            compact = CompactRange()
            compact.extend(LEAVES[:start])
            compact.extend(LEAVES[start:end])
            assert compact.size == end
            assert compact.root() == ROOTS[end]
    compact = CompactRange()
    with pytest.raises(MerkleError, match="wrong hash length"):
        compact.extend([LEAVES[0], b"short"])
    assert compact.size == 1 and compact.root() == ROOTS[1]


def test_compact_range_peaks_are_the_aligned_pieces() -> None:
    store = _store_answering(LEAVES, MAX_SIZE)
    compact = CompactRange()
    for size in range(1, MAX_SIZE + 1):
        compact.append(LEAVES[size - 1])
        assert compact.peaks == tuple(store(*piece) for piece in aligned_pieces(0, size))


def test_compact_range_append_reports_completed_subtrees() -> None:
    compact = CompactRange()
    for index in range(MAX_SIZE):
        completed = compact.append(LEAVES[index])
        # One per trailing one bit of the old size, plus the leaf itself.
        trailing_ones = ((index + 1) & ~index).bit_length() - 1
        assert len(completed) == trailing_ones + 1
        assert completed[0] == (0, index, LEAVES[index])
        for level, position, digest in completed:
            width = 1 << level
            assert (position + 1) * width == index + 1
            assert digest == _mth(LEAVES[position * width : (position + 1) * width])


def test_compact_range_resumes_from_size_and_peaks() -> None:
    for size in (0, 1, 5, 64, 77):
        compact = CompactRange()
        for value in LEAVES[:size]:
            compact.append(value)
        resumed = CompactRange(compact.size, compact.peaks)
        for value in LEAVES[size : size + 40]:
            assert resumed.append(value) == compact.append(value)
            assert resumed.root() == compact.root()


@pytest.mark.parametrize(
    ("size", "peaks", "reason"),
    [
        (-1, (), "negative size"),
        (3, (EMPTY_ROOT,), "needs 2 peaks"),
        (1, (EMPTY_ROOT, EMPTY_ROOT), "needs 1 peaks"),
        (1, (b"short",), "5 bytes"),
    ],
)
def test_compact_range_rejects_bad_state(size: int, peaks: tuple[bytes, ...], reason: str) -> None:
    with pytest.raises(MerkleError, match=f"invalid compact range: .*{reason}"):
        CompactRange(size, peaks)


def test_compact_range_rejects_short_leaf_hash() -> None:
    with pytest.raises(MerkleError, match="wrong hash length"):
        CompactRange().append(b"\x00" * 31)


def test_inclusion_proofs_for_every_leaf_of_every_size() -> None:
    for size in range(1, MAX_SIZE + 1):
        store = _store_answering(LEAVES, size)
        for index in range(size):
            proof = inclusion_proof(index, size, store)
            verify_inclusion(LEAVES[index], index, size, proof, ROOTS[size])
        # The oracle comparison is slower; a few indices per size suffice.
        for index in {0, size // 2, size - 1}:
            assert inclusion_proof(index, size, store) == _path(index, LEAVES[:size])


def test_consistency_proofs_for_sampled_size_pairs() -> None:
    rng = random.Random(9162)
    pairs = {(m, n) for n in range(1, 65) for m in range(1, n + 1)}
    pairs |= {(m, MAX_SIZE) for m in range(1, MAX_SIZE + 1)}
    for _ in range(3000):
        low, high = sorted(rng.sample(range(1, MAX_SIZE + 1), 2))
        pairs.add((low, high))
    for size1, size2 in sorted(pairs):
        proof = consistency_proof(size1, size2, _store_answering(LEAVES, size2))
        verify_consistency(size1, size2, proof, ROOTS[size1], ROOTS[size2])
        if size2 <= 64:
            assert proof == _subproof(size1, LEAVES[:size2], True)


def test_proof_generators_make_few_aligned_calls() -> None:
    # At most one incomplete node per proof, so calls stay O(log n).
    for size in (1, 2, 3, 7, 100, 255, 256, 300):
        for index in range(size):
            calls: list[tuple[int, int]] = []
            inclusion_proof(index, size, _store_answering(LEAVES, size, calls))
            assert len(calls) <= 2 * size.bit_length()
        for size1 in range(1, size + 1):
            calls = []
            consistency_proof(size1, size, _store_answering(LEAVES, size, calls))
            assert len(calls) <= 2 * size.bit_length() + 1


def test_proof_generators_reject_bad_arguments() -> None:
    store = _store_answering(LEAVES, 10)
    with pytest.raises(MerkleError, match="invalid log size"):
        inclusion_proof(0, 0, store)
    with pytest.raises(MerkleError, match="invalid leaf index"):
        inclusion_proof(10, 10, store)
    with pytest.raises(MerkleError, match="invalid leaf index"):
        inclusion_proof(-1, 10, store)
    with pytest.raises(MerkleError, match="invalid log size"):
        consistency_proof(0, 10, store)
    with pytest.raises(MerkleError, match="invalid log size"):
        consistency_proof(5, 4, store)
    assert consistency_proof(10, 10, store) == []


def test_verifiers_reject_bad_arguments() -> None:
    root = ROOTS[4]
    with pytest.raises(MerkleError, match="invalid leaf index"):
        verify_inclusion(LEAVES[0], -1, 4, [], root)
    with pytest.raises(MerkleError, match="invalid log size"):
        verify_consistency(-1, 4, [], root, root)
    with pytest.raises(MerkleError, match="invalid log size"):
        verify_consistency(0, 0, [], EMPTY_ROOT, EMPTY_ROOT)
    proof = consistency_proof(3, 4, _store_answering(LEAVES, 4))
    with pytest.raises(MerkleError, match=r"wrong hash length: proof\[1\]"):
        verify_consistency(3, 4, [proof[0], proof[1][:31], proof[2]], ROOTS[3], root)


@pytest.mark.parametrize(
    ("start", "end", "expected"),
    [
        (0, 0, []),
        (0, 1, [(0, 1)]),
        (0, 6, [(0, 4), (4, 6)]),
        (0, 13, [(0, 8), (8, 12), (12, 13)]),
        (4, 7, [(4, 6), (6, 7)]),
        (1, 8, [(1, 2), (2, 4), (4, 8)]),
        (3, 13, [(3, 4), (4, 8), (8, 12), (12, 13)]),
    ],
)
def test_aligned_pieces_examples(start: int, end: int, expected: list[tuple[int, int]]) -> None:
    assert aligned_pieces(start, end) == expected


def test_aligned_pieces_rejects_reversed_range() -> None:
    with pytest.raises(MerkleError, match="invalid range"):
        aligned_pieces(5, 4)
    with pytest.raises(MerkleError, match="invalid range"):
        aligned_pieces(-1, 4)


NO_DB = settings(database=None, deadline=None)


@NO_DB
@given(st.integers(0, 2**40), st.integers(0, 2**12))
def test_aligned_pieces_cover_the_range_with_aligned_powers(start: int, length: int) -> None:
    pieces = aligned_pieces(start, start + length)
    position = start
    for piece_start, piece_end in pieces:
        width = piece_end - piece_start
        assert piece_start == position
        assert width > 0 and width & (width - 1) == 0
        assert piece_start % width == 0
        position = piece_end
    assert position == start + length
    if start == 0:
        assert len(pieces) == length.bit_count()


@st.composite
def trees(draw: st.DrawFn, min_size: int = 1) -> list[bytes]:
    size = draw(st.integers(min_size, 200))
    seed = draw(st.binary(min_size=1, max_size=8))
    return [leaf_hash(seed + i.to_bytes(2, "big")) for i in range(size)]


@NO_DB
@given(trees(), st.data())
def test_inclusion_property(leaves: list[bytes], data: st.DataObject) -> None:
    size = len(leaves)
    index = data.draw(st.integers(0, size - 1))
    root = root_hash(leaves)
    proof = inclusion_proof(index, size, _store_answering(leaves, size))
    verify_inclusion(leaves[index], index, size, proof, root)

    # Any flipped bit in any hash breaks the proof.
    if proof:
        position = data.draw(st.integers(0, len(proof) - 1))
        bit = data.draw(st.integers(0, 255))
        tampered = list(proof)
        tampered[position] = _flip(tampered[position], bit)
        with pytest.raises(MerkleError, match="root mismatch"):
            verify_inclusion(leaves[index], index, size, tampered, root)
    with pytest.raises(MerkleError, match="root mismatch"):
        verify_inclusion(_flip(leaves[index], 0), index, size, proof, root)
    # A proof for another index or size, or one hash more or less, fails.
    other = data.draw(st.integers(0, size - 1))
    if leaves[other] != leaves[index]:
        with pytest.raises(MerkleError):
            verify_inclusion(leaves[other], other, size, proof, root)
    with pytest.raises(MerkleError, match="wrong proof size"):
        verify_inclusion(leaves[index], index, size, [*proof, root], root)
    if proof:
        with pytest.raises(MerkleError, match="wrong proof size"):
            verify_inclusion(leaves[index], index, size, proof[:-1], root)


@NO_DB
@given(trees(), st.data())
def test_consistency_property(leaves: list[bytes], data: st.DataObject) -> None:
    size2 = len(leaves)
    size1 = data.draw(st.integers(1, size2))
    root1, root2 = root_hash(leaves[:size1]), root_hash(leaves)
    proof = consistency_proof(size1, size2, _store_answering(leaves, size2))
    verify_consistency(size1, size2, proof, root1, root2)

    if proof:
        position = data.draw(st.integers(0, len(proof) - 1))
        bit = data.draw(st.integers(0, 255))
        tampered = list(proof)
        tampered[position] = _flip(tampered[position], bit)
        with pytest.raises(MerkleError, match="root mismatch"):
            verify_consistency(size1, size2, tampered, root1, root2)
    with pytest.raises(MerkleError, match="root mismatch"):
        verify_consistency(size1, size2, proof, _flip(root1, 7), root2)
    with pytest.raises(MerkleError, match="root mismatch"):
        verify_consistency(size1, size2, proof, root1, _flip(root2, 7))
    with pytest.raises(MerkleError, match="wrong proof size"):
        verify_consistency(size1, size2, [*proof, root2], root1, root2)


@NO_DB
@given(trees(min_size=0))
def test_compact_range_property(leaves: list[bytes]) -> None:
    compact = CompactRange()
    for value in leaves:
        compact.append(value)
    assert compact.root() == root_hash(leaves) == _mth(leaves)
    assert CompactRange(compact.size, compact.peaks).root() == compact.root()


def _flip(value: bytes, bit: int) -> bytes:
    changed = bytearray(value)
    changed[bit // 8] ^= 1 << (bit % 8)
    return bytes(changed)
