"""Hashing media and matching it against the federation's records.

- :mod:`clients.matching.hashing`: signal type -> hasher; files to signals.
- :mod:`federation.protocol.pdq_index`: exact PDQ range search (multi-index hashing).
- :mod:`federation.protocol.matching`: the matching steps shared by client and server.
- :mod:`clients.matching.local`: matching against the member's local store.
"""
