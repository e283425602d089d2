"""RFC 9162 Merkle tree hashing, proofs and their verification.

Pure functions over hashes: no I/O. The server builds proofs from stored
subtree hashes through a ``subtree_hash(start, end)`` callback; members and
auditors verify them with :func:`verify_inclusion` and
:func:`verify_consistency`, which return ``None`` or raise
:class:`MerkleError` with a precise message.

Hashing (RFC 9162, section 2.1.1)::

    leaf = SHA-256(0x00 || leaf bytes)
    node = SHA-256(0x01 || left || right)
    root of the empty tree = SHA-256("")

Every error message starts with one of these categories, so callers and
tests can match on it: ``invalid log size``, ``invalid leaf index``,
``invalid range``, ``wrong proof size``, ``wrong hash length``,
``root mismatch``, ``invalid compact range``.

Subtree hashes the proof generators ask for
-------------------------------------------
A store only needs the hashes of complete, aligned, power-of-two subtrees
(C2SP tlog-tiles style): ``[k * 2**h, (k + 1) * 2**h)``, which are exactly
what :meth:`CompactRange.append` reports as it completes them. The proof
generators call ``subtree_hash`` on such ranges only, with ``end`` never
beyond the tree size the proof is for. A node of the RFC tree that lies on
its right edge is incomplete; its hash is rebuilt here from the aligned
pieces of :func:`aligned_pieces` (at most one such node per proof, so a proof
costs O(log n) calls).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Sequence

__all__ = [
    "EMPTY_ROOT",
    "HASH_SIZE",
    "CompactRange",
    "MerkleError",
    "aligned_pieces",
    "consistency_proof",
    "inclusion_proof",
    "leaf_hash",
    "node_hash",
    "root_hash",
    "verify_consistency",
    "verify_inclusion",
]

HASH_SIZE = 32
_LEAF_PREFIX = b"\x00"
_NODE_PREFIX = b"\x01"

EMPTY_ROOT: bytes = hashlib.sha256(b"").digest()
"""The root hash of the empty tree: SHA-256 of the empty string."""

SubtreeHash = Callable[[int, int], bytes]


class MerkleError(Exception):
    """A Merkle proof or tree input is invalid; the message says why."""


def leaf_hash(leaf: bytes) -> bytes:
    """Return the RFC 9162 hash of one leaf: SHA-256(0x00 || leaf)."""
    return hashlib.sha256(_LEAF_PREFIX + leaf).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """Return the RFC 9162 hash of an interior node: SHA-256(0x01 || left || right)."""
    return hashlib.sha256(_NODE_PREFIX + left + right).digest()


def root_hash(leaf_hashes: Sequence[bytes]) -> bytes:
    """Return the root hash of the tree whose leaves have these hashes.

    Works level by level, promoting an unpaired last node unchanged, which
    yields the same tree as RFC 9162's split at the largest power of two.
    """
    if not leaf_hashes:
        return EMPTY_ROOT
    # One pass over lengths first: cheap, and names the offender if any.
    if set(map(len, leaf_hashes)) != {HASH_SIZE}:
        for position, value in enumerate(leaf_hashes):
            _check_hash(f"leaf hash {position}", value)
    level = list(leaf_hashes)
    sha256 = hashlib.sha256
    while len(level) > 1:
        paired = [
            sha256(_NODE_PREFIX + left + right).digest()
            for left, right in zip(level[0::2], level[1::2], strict=False)
        ]
        if len(level) % 2:
            paired.append(level[-1])
        level = paired
    return level[0]


def aligned_pieces(start: int, end: int) -> list[tuple[int, int]]:
    """Split ``[start, end)`` into the fewest aligned power-of-two ranges, left to right.

    Each piece is ``[k * 2**h, (k + 1) * 2**h)``. For ``[0, n)`` the pieces are
    the maximal complete subtrees of a tree of size ``n`` (one per set bit of
    ``n``, largest first), whose hashes are the peaks of a
    :class:`CompactRange` of that size. For a node of the RFC tree, i.e. when
    ``start`` is a multiple of the smallest power of two not below
    ``end - start``, the pieces shrink left to right and the node's hash is
    their right fold: ``node(p0, node(p1, ... p_last))``.
    """
    if not 0 <= start <= end:
        raise MerkleError(f"invalid range: [{start}, {end})")
    pieces = []
    while start < end:
        width = 1 << ((end - start).bit_length() - 1)
        if start:
            # The alignment of start (its lowest set bit) caps the width.
            width = min(width, start & -start)
        pieces.append((start, start + width))
        start += width
    return pieces


def _range_hash(start: int, end: int, subtree_hash: SubtreeHash) -> bytes:
    """Hash of the RFC tree node covering ``[start, end)``, from aligned pieces."""
    pieces = aligned_pieces(start, end)
    result = subtree_hash(*pieces[-1])
    for piece in reversed(pieces[:-1]):
        result = node_hash(subtree_hash(*piece), result)
    return result


def _split(size: int) -> int:
    """RFC 9162's k: the largest power of two smaller than ``size`` (``size`` >= 2)."""
    return 1 << ((size - 1).bit_length() - 1)


def inclusion_proof(index: int, size: int, subtree_hash: SubtreeHash) -> list[bytes]:
    """Return the RFC 9162 inclusion proof (audit path) of leaf ``index`` in a tree of ``size``.

    Hashes come leaf-side first, as :func:`verify_inclusion` expects.
    ``subtree_hash(start, end)`` must return the hash of leaves
    ``[start, end)``; it is only called on aligned power-of-two ranges with
    ``end <= size``.
    """
    if size < 1:
        raise MerkleError(f"invalid log size: {size} (an inclusion proof needs a leaf)")
    if not 0 <= index < size:
        raise MerkleError(f"invalid leaf index: {index} not in a log of size {size}")
    # Walk down from the root to the leaf, collecting the sibling of each node
    # on the path; the proof lists them bottom-up.
    siblings = []
    start, end = 0, size
    while end - start > 1:
        middle = start + _split(end - start)
        if index < middle:
            siblings.append(_range_hash(middle, end, subtree_hash))
            end = middle
        else:
            siblings.append(_range_hash(start, middle, subtree_hash))
            start = middle
    siblings.reverse()
    return siblings


def consistency_proof(size1: int, size2: int, subtree_hash: SubtreeHash) -> list[bytes]:
    """Return the RFC 9162 consistency proof from tree size ``size1`` to ``size2``.

    ``0 < size1 <= size2``; equal sizes give the empty proof. ``subtree_hash``
    is only called on aligned power-of-two ranges with ``end <= size2``.
    """
    if size1 < 1 or size2 < size1:
        raise MerkleError(
            f"invalid log size: need 0 < size1 <= size2, got size1={size1} size2={size2}"
        )
    if size1 == size2:
        return []
    # RFC 9162 SUBPROOF(m, D[start:end], b), unrolled: descend while the old
    # tree's edge (size1) is not the end of the current node.
    hashes = []
    start, end = 0, size2
    at_left_edge = True
    while end != size1:
        middle = start + _split(end - start)
        if size1 <= middle:
            hashes.append(_range_hash(middle, end, subtree_hash))
            end = middle
        else:
            hashes.append(_range_hash(start, middle, subtree_hash))
            start = middle
            at_left_edge = False
    if not at_left_edge:
        # This node ends the old tree. At the left edge it is the whole old
        # tree, whose hash root1 the verifier holds; elsewhere it must be sent.
        hashes.append(_range_hash(start, end, subtree_hash))
    hashes.reverse()
    return hashes


def verify_inclusion(
    leaf_hash: bytes, index: int, size: int, proof: Sequence[bytes], root: bytes
) -> None:
    """Verify that ``leaf_hash`` is leaf ``index`` of the tree of ``size`` with this ``root``.

    Returns None on success; raises :class:`MerkleError` otherwise.
    """
    if size < 1:
        raise MerkleError(f"invalid log size: {size} (an empty log includes no leaf)")
    if not 0 <= index < size:
        raise MerkleError(f"invalid leaf index: {index} not in a log of size {size}")
    inner, border = _decompose_inclusion(index, size)
    if len(proof) != inner + border:
        raise MerkleError(f"wrong proof size: expected {inner + border} hashes, got {len(proof)}")
    _check_hash("leaf hash", leaf_hash)
    _check_hash("root", root)
    _check_proof_hashes(proof)
    computed = _chain_inner(leaf_hash, proof[:inner], index)
    computed = _chain_border_right(computed, proof[inner:])
    if computed != root:
        raise MerkleError(f"root mismatch: computed {computed.hex()}, expected {root.hex()}")


def verify_consistency(
    size1: int, size2: int, proof: Sequence[bytes], root1: bytes, root2: bytes
) -> None:
    """Verify that the tree of ``size2`` and ``root2`` extends the one of ``size1`` and ``root1``.

    A proof from size 0 is refused: the empty tree is a prefix of every tree,
    so such a proof shows nothing, and accepting one would let a client start
    from an unverified checkpoint. Returns None on success; raises
    :class:`MerkleError` otherwise.
    """
    if size1 < 0 or size2 < size1:
        raise MerkleError(f"invalid log size: need size1 <= size2, got size1={size1} size2={size2}")
    if size1 == 0:
        raise MerkleError("invalid log size: size1 is 0, a proof from the empty log proves nothing")
    if size1 == size2:
        if proof:
            raise MerkleError(f"wrong proof size: expected 0 hashes, got {len(proof)}")
        _check_hash("root1", root1)
        _check_hash("root2", root2)
        if root1 != root2:
            raise MerkleError(
                f"root mismatch: equal sizes but root1 {root1.hex()} != root2 {root2.hex()}"
            )
        return

    # The proof of size1 in size2 is the inclusion path of leaf size1 - 1,
    # minus the levels below the largest complete subtree ending at size1.
    inner, border = _decompose_inclusion(size1 - 1, size2)
    shift = (size1 & -size1).bit_length() - 1
    inner -= shift
    # When size1 is a power of two, the old root is that subtree's hash and
    # the proof omits it; otherwise it is the proof's first hash.
    seed_in_proof = size1 != 1 << shift
    expected = inner + border + (1 if seed_in_proof else 0)
    if len(proof) != expected:
        raise MerkleError(f"wrong proof size: expected {expected} hashes, got {len(proof)}")
    _check_hash("root1", root1)
    _check_hash("root2", root2)
    _check_proof_hashes(proof)
    if seed_in_proof:
        seed, path = proof[0], proof[1:]
    else:
        seed, path = root1, proof
    mask = (size1 - 1) >> shift

    # root1 uses only the left siblings; root2 uses every hash.
    computed1 = _chain_inner_right(seed, path[:inner], mask)
    computed1 = _chain_border_right(computed1, path[inner:])
    if computed1 != root1:
        raise MerkleError(f"root mismatch: computed root1 {computed1.hex()}, got {root1.hex()}")
    computed2 = _chain_inner(seed, path[:inner], mask)
    computed2 = _chain_border_right(computed2, path[inner:])
    if computed2 != root2:
        raise MerkleError(f"root mismatch: computed root2 {computed2.hex()}, got {root2.hex()}")


def _check_hash(what: str, value: bytes) -> None:
    # A hash of another length cannot come from SHA-256, whatever it matches.
    if len(value) != HASH_SIZE:
        raise MerkleError(f"wrong hash length: {what} has {len(value)} bytes, not {HASH_SIZE}")


def _check_proof_hashes(proof: Sequence[bytes]) -> None:
    for position, value in enumerate(proof):
        _check_hash(f"proof[{position}]", value)


def _decompose_inclusion(index: int, size: int) -> tuple[int, int]:
    """Split the audit path of ``index`` in ``size`` into (inner, border) lengths.

    Inner hashes lie below the level where the paths to ``index`` and to the
    last leaf diverge; border hashes are the left siblings along the right edge.
    """
    inner = (index ^ (size - 1)).bit_length()
    border = (index >> inner).bit_count()
    return inner, border


def _chain_inner(seed: bytes, proof: Sequence[bytes], index: int) -> bytes:
    """Hash ``seed`` up with siblings on either side, as the bits of ``index`` say."""
    for level, sibling in enumerate(proof):
        seed = node_hash(sibling, seed) if (index >> level) & 1 else node_hash(seed, sibling)
    return seed


def _chain_inner_right(seed: bytes, proof: Sequence[bytes], index: int) -> bytes:
    """Like :func:`_chain_inner` but skip right siblings: they are newer than the old tree."""
    for level, sibling in enumerate(proof):
        if (index >> level) & 1:
            seed = node_hash(sibling, seed)
    return seed


def _chain_border_right(seed: bytes, proof: Sequence[bytes]) -> bytes:
    """Hash ``seed`` up the right edge, where every sibling is on the left."""
    for sibling in proof:
        seed = node_hash(sibling, seed)
    return seed


class CompactRange:
    """Incremental root of a growing log, in O(log n) memory.

    Holds the hashes of the maximal aligned complete subtrees of the log (its
    peaks, one per set bit of ``size``, largest and leftmost first). Append is
    amortised O(1) hashes and reports every aligned subtree it completes, so a
    store can save exactly the hashes that :func:`inclusion_proof` and
    :func:`consistency_proof` later ask for. To resume from a store, pass the
    hashes of ``aligned_pieces(0, size)`` as ``peaks``.
    """

    __slots__ = ("_peaks", "_size")

    def __init__(self, size: int = 0, peaks: Sequence[bytes] = ()) -> None:
        """Start from a log of ``size`` leaves whose peaks are ``peaks``."""
        if size < 0:
            raise MerkleError(f"invalid compact range: negative size {size}")
        if len(peaks) != size.bit_count():
            raise MerkleError(
                f"invalid compact range: size {size} needs {size.bit_count()} peaks, "
                f"got {len(peaks)}"
            )
        for position, value in enumerate(peaks):
            if len(value) != HASH_SIZE:
                raise MerkleError(
                    f"invalid compact range: peak {position} has {len(value)} bytes, "
                    f"not {HASH_SIZE}"
                )
        self._size = size
        self._peaks = list(peaks)

    @property
    def size(self) -> int:
        """The number of leaves appended so far."""
        return self._size

    @property
    def peaks(self) -> tuple[bytes, ...]:
        """The hashes of ``aligned_pieces(0, size)``, left to right."""
        return tuple(self._peaks)

    def append(self, leaf_hash: bytes) -> list[tuple[int, int, bytes]]:
        """Append one leaf hash; return each aligned subtree it completes.

        Entries are ``(level, index_at_level, hash)``, where the subtree covers
        leaves ``[index * 2**level, (index + 1) * 2**level)``; the first is the
        leaf itself at level 0, then one per level it completes upwards.
        """
        if len(leaf_hash) != HASH_SIZE:
            raise MerkleError(
                f"wrong hash length: leaf hash has {len(leaf_hash)} bytes, not {HASH_SIZE}"
            )
        index = self._size
        completed = [(0, index, leaf_hash)]
        value = leaf_hash
        level = 0
        # Each trailing one bit of the old size is a peak of the same height
        # that the new subtree now pairs with.
        while (index >> level) & 1:
            value = node_hash(self._peaks.pop(), value)
            level += 1
            completed.append((level, index >> level, value))
        self._peaks.append(value)
        self._size = index + 1
        return completed

    def extend(self, leaf_hashes: Iterable[bytes]) -> None:
        """Append each leaf hash in turn, as :meth:`append` does, reporting nothing
        (an auditor recomputing a root appends a million: no lists to build)."""
        peaks, size, sha256 = self._peaks, self._size, hashlib.sha256
        try:
            for value in leaf_hashes:
                if len(value) != HASH_SIZE:
                    raise MerkleError(
                        f"wrong hash length: leaf hash has {len(value)} bytes, not {HASH_SIZE}"
                    )
                index = size
                while index & 1:
                    value = sha256(_NODE_PREFIX + peaks.pop() + value).digest()
                    index >>= 1
                peaks.append(value)
                size += 1
        finally:
            self._size = size

    def root(self) -> bytes:
        """Return the root hash of the log at its current size."""
        if not self._peaks:
            return EMPTY_ROOT
        value = self._peaks[-1]
        for peak in reversed(self._peaks[:-1]):
            value = node_hash(peak, value)
        return value

    def __repr__(self) -> str:
        return f"CompactRange(size={self._size}, root={self.root().hex()})"
