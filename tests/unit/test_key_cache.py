"""The per-process key cache: entries live for one value of the identities counter."""

from __future__ import annotations

from federation.identities.cache import KeyCache
from federation.identities.service import KeyInfo
from federation.protocol.keys import generate_private_key


def info(kid: str, status: str = "active") -> KeyInfo:
    return KeyInfo(
        key_id=kid,
        org_id="acme",
        public_key=generate_private_key().public_key(),
        status=status,
        org_status="active",
        roles=frozenset({"consumer"}),
    )


def test_an_entry_serves_only_its_counter_value() -> None:
    cache = KeyCache()
    cache.put(5, info("k1"))
    assert cache.get(5, "k1") is not None
    assert cache.get(6, "k1") is None  # an organisation or key changed
    assert cache.get(4, "k1") is None
    assert cache.get(5, "k2") is None


def test_a_newer_value_drops_every_entry() -> None:
    cache = KeyCache()
    cache.put(5, info("k1"))
    cache.put(5, info("k2"))
    revoked = info("k1", "revoked")
    cache.put(6, revoked)
    assert len(cache) == 1
    assert cache.get(6, "k1") is revoked and cache.get(6, "k2") is None


def test_a_lookup_from_before_a_change_is_not_kept() -> None:
    cache = KeyCache()
    cache.put(6, info("k1", "revoked"))
    cache.put(5, info("k1"))  # a slow request that read the counter before the revocation
    got = cache.get(6, "k1")
    assert got is not None and got.status == "revoked"
    assert cache.get(5, "k1") is None


def test_the_cache_is_bounded() -> None:
    cache = KeyCache(limit=3)
    for i in range(10):
        cache.put(1, info(f"k{i}"))
    assert len(cache) <= 3
    assert cache.get(1, "k9") is not None
