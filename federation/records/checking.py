"""Checking the items of big record statements in a helper process, off the event loop.

A 20,000-item submission takes about 140 ms of Python to check (normal form,
record id, labels, size bounds). On the event loop those 140 ms would hold up
everything else the server does, above all the append in progress, which
needs the loop at each of its database round trips. The check is a pure
function of the statement's bytes and the taxonomy, so a helper process runs
it on another core and hands back the :class:`~federation.records.ingest.Prepared`
result (unpickling costs the event loop about a sixth of the check).

Small statements are checked in-process, in steps that hand the loop back.
If the helper process dies, the statement is checked in-process and the pool
is started afresh for the next one.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import logging
import multiprocessing
import os
import signal
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

import orjson

from federation.protocol.problems import HashfedError, Problem
from federation.protocol.statements import SignedStatement
from federation.protocol.taxonomy import Taxonomy
from federation.records.ingest import Prepared, prepare, prepare_async

log = logging.getLogger("hashfed.checking")

# Below this many items the round trip to the helper costs more than it saves.
DEFAULT_MIN_ITEMS = 1_000
# How often a helper looks whether the server that started it is still there.
PARENT_CHECK_S = 0.5
HELPER_GC_THRESHOLDS = (50_000, 50, 100)


class ItemChecker:
    """Checks record statements' items: big ones in helper processes, small ones here.

    ``processes`` = 0 checks everything in-process. The helpers are started
    on first use (``spawn``, so nothing of the server's threads or sockets is
    inherited) and stopped by :meth:`close`.
    """

    def __init__(self, processes: int, min_items: int = DEFAULT_MIN_ITEMS) -> None:
        if processes < 0:
            raise ValueError("processes must be 0 or more")
        self.processes = processes
        self.min_items = min_items
        self._pool: ProcessPoolExecutor | None = None

    def _executor(self) -> ProcessPoolExecutor:
        if self._pool is None:
            self._pool = ProcessPoolExecutor(
                max_workers=self.processes,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_start_helper,
                initargs=(os.getpid(),),
            )
        return self._pool

    async def prepare(self, statement: SignedStatement, taxonomy: Taxonomy) -> Prepared:
        """:func:`~federation.records.ingest.prepare` of ``statement``, wherever it is cheapest."""
        items = statement.payload.get("items")
        if not self.processes or not isinstance(items, list) or len(items) < self.min_items:
            return await prepare_async(statement, taxonomy)
        loop = asyncio.get_running_loop()
        try:
            outcome = await loop.run_in_executor(
                self._executor(),
                _prepare_in_helper,
                statement.id,
                statement.signed_bytes,
                tuple(taxonomy.labels.items()),
            )
        except (BrokenProcessPool, OSError) as exc:  # died, or could not be started
            log.warning("item-checking helper unavailable (%s); checking in-process", exc)
            self._discard()
            return await prepare_async(statement, taxonomy)
        if isinstance(outcome, Prepared):
            return outcome
        problem, detail, extra = outcome
        raise HashfedError(Problem[problem], detail, **extra)

    def _discard(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)

    def close(self) -> None:
        """Stop the helper processes (waits for a check in progress)."""
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)


def _start_helper(server_pid: int) -> None:
    # Ctrl-C reaches the whole process group; the server decides when helpers stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # A check allocates hundreds of thousands of short-lived objects and no cycles:
    # as in the server, no full collections of the long-lived heap.
    gc.collect()
    gc.freeze()
    gc.set_threshold(*HELPER_GC_THRESHOLDS)
    # A server killed outright (SIGKILL, the OOM killer) cannot stop its helper:
    # the helper sees its parent change and leaves by itself.
    threading.Thread(target=_exit_with, args=(server_pid,), daemon=True).start()


def _exit_with(server_pid: int) -> None:
    while os.getppid() == server_pid:
        time.sleep(PARENT_CHECK_S)
    os._exit(0)


@functools.lru_cache(maxsize=8)
def _taxonomy(labels: tuple[tuple[str, str], ...]) -> Taxonomy:
    return Taxonomy(dict(labels))


def _prepare_in_helper(
    statement_id: str, signed_bytes: bytes, labels: tuple[tuple[str, str], ...]
) -> Prepared | tuple[str, str, dict[str, Any]]:
    """In the helper: the statement from its bytes (already opened and verified), then check it."""
    line_end = signed_bytes.index(b"\n")
    payload = orjson.loads(signed_bytes[line_end + 1 :])
    statement = SignedStatement(
        id=statement_id,
        type=str(payload["type"]),
        signed_bytes=signed_bytes,
        signature=b"",
        payload=payload,
    )
    try:
        return prepare(statement, _taxonomy(labels))
    except HashfedError as err:  # its constructor's arguments do not pickle by themselves
        return err.problem.name, err.detail, err.extra
