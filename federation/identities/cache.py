"""Key lookups for authentication, cached per process and checked on every request.

Every change to an organisation or a key (admission, suspension,
reinstatement, key addition, retirement, revocation) bumps
``log_head.identities`` in the same transaction. Each request reads that
counter together with the log size, in the one database read authentication
makes anyway, and uses a cached lookup only when it was made under the same
counter value. So a revoked key or a suspended organisation is refused on the
very next request after the statement committed, by every worker process,
with no time-to-live involved.

Why it is safe: a lookup is stored under the counter value read *before* the
lookup, so it reflects the identities at that value or later; an entry is
used only by a request that read the same value, i.e. before any later
change committed.
"""

from __future__ import annotations

from federation.identities.service import KeyInfo

MAX_CACHED_KEYS = 10_000


class KeyCache:
    """Registered keys by id, valid for one value of the identities counter."""

    def __init__(self, limit: int = MAX_CACHED_KEYS) -> None:
        self.limit = limit
        self._version: int | None = None
        self._keys: dict[str, KeyInfo] = {}

    @property
    def version(self) -> int | None:
        """The counter value the cached entries were looked up under."""
        return self._version

    def get(self, version: int, kid: str) -> KeyInfo | None:
        """The key as looked up under ``version``; None when not cached (or unknown)."""
        if version != self._version:
            return None
        return self._keys.get(kid)

    def put(self, version: int, info: KeyInfo) -> None:
        """Remember ``info``, looked up after ``version`` was read."""
        if self._version is None or version > self._version:
            self._keys.clear()
            self._version = version
        elif version < self._version:
            return  # a slow lookup from before a change: keep the newer entries
        if len(self._keys) >= self.limit:
            self._keys.clear()
        self._keys[info.key_id] = info

    def __len__(self) -> int:
        return len(self._keys)
