"""The in-memory nonce store of a single-process (SQLite) server."""

from __future__ import annotations

import time

import pytest

from federation.auth.nonces import MemoryNonces
from federation.protocol.problems import HashfedError, Problem


async def test_a_nonce_is_accepted_once() -> None:
    store = MemoryNonces()
    later = int(time.time()) + 600
    assert await store.remember("k", "n1", later)
    assert not await store.remember("k", "n1", later)
    assert await store.remember("other-key", "n1", later)


async def test_expired_nonces_are_forgotten() -> None:
    store = MemoryNonces()
    await store.remember("k", "old", int(time.time()) - 1)
    await store.remember("k", "new", int(time.time()) + 600)
    assert await store.expire() == 1
    assert await store.remember("k", "old", int(time.time()) + 600)


async def test_a_full_store_makes_room_or_refuses() -> None:
    store = MemoryNonces(limit=2)
    await store.remember("k", "a", int(time.time()) - 1)
    await store.remember("k", "b", int(time.time()) + 600)
    assert await store.remember("k", "c", int(time.time()) + 600)  # "a" expired: room
    with pytest.raises(HashfedError) as info:
        await store.remember("k", "d", int(time.time()) + 600)
    assert info.value.problem is Problem.RATE_LIMITED


async def test_expiry_follows_expiry_times_not_arrival() -> None:
    store = MemoryNonces()
    now = int(time.time())
    await store.remember("k", "late", now + 600)
    await store.remember("k", "early", now - 5)
    await store.remember("k", "earlier", now - 10)
    assert await store.expire() == 2
    assert not await store.remember("k", "late", now + 600)  # still remembered
    assert await store.remember("k", "early", now + 600)
    assert await store.expire() == 0
