"""Checking the items of big record statements in a helper process, off the event loop.

A 20,000-item submission takes about 140 ms of Python to check (normal form,
record id, labels, size bounds). On the event loop those 140 ms would hold up
everything else the server does, above all the append in progress, which
needs the loop at each of its database round trips. The check is a pure
function of the statement's bytes and the taxonomy, so a helper process runs
it on another core and hands back the :class:`~federation.records.ingest.Prepared`
result (unpickling costs the event loop about a sixth of the check).

A big submissions statement can go further in the helper: once the server
has seen that none of its records exists (:meth:`ItemChecker.new_ids`), it
is applied as if none did and its new records are encoded there too
(:meth:`ItemChecker.draft_new`, :func:`~federation.records.ingest.draft_as_new`). For
50,000 items that is about 360 ms of Python (check 200 ms more) the event
loop no longer runs; it unpickles the rows and results in about 110 ms.

Small statements are checked in-process, in steps that hand the loop back.
If the helper process dies, the statement is checked in-process and the pool
is started afresh for the next one.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import gc
import logging
import multiprocessing
import os
import signal
import threading
import time
from collections import OrderedDict
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

import orjson

from federation.governance.policy import PolicyInForce
from federation.identities.service import Principal
from federation.protocol.problems import HashfedError, Problem
from federation.protocol.statements import SignedStatement, StatementType
from federation.protocol.taxonomy import Taxonomy
from federation.records.ingest import NewDraft, Prepared, draft_as_new, prepare, prepare_async

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

    def _worth_a_helper(self, statement: SignedStatement) -> bool:
        items = statement.payload.get("items")
        return bool(self.processes) and isinstance(items, list) and len(items) >= self.min_items

    async def prepare(self, statement: SignedStatement, taxonomy: Taxonomy) -> Prepared:
        """:func:`~federation.records.ingest.prepare` of ``statement``, wherever it is cheapest."""
        if self._worth_a_helper(statement):
            labels = tuple(taxonomy.labels.items())
            outcome = await self._in_helper(_prepare_in_helper, statement, labels)
            if isinstance(outcome, Prepared):
                return outcome
        return await prepare_async(statement, taxonomy)

    async def new_ids(self, statement: SignedStatement, taxonomy: Taxonomy) -> list[str] | None:
        """The record ids of a big submissions statement's valid items, checked in a helper.

        The first step of drafting it there: if none of these records exists,
        :meth:`draft_new` drafts it, otherwise :meth:`prepare` hands its items
        back; the helper keeps the checked items until then (with several
        helpers, that question may reach another one, which checks the
        statement again). None where that does not
        apply (no helpers, a small statement, another type) or no helper is
        available: then :meth:`prepare` it. Raises ``HashfedError`` if the
        statement is refused whole.
        """
        if statement.type != StatementType.SUBMISSIONS or not self._worth_a_helper(statement):
            return None
        labels = tuple(taxonomy.labels.items())
        outcome = await self._in_helper(_ids_in_helper, statement, labels)
        return outcome if isinstance(outcome, list) else None

    async def draft_new(
        self, statement: SignedStatement, principal: Principal, policy: PolicyInForce
    ) -> NewDraft | None:
        """The statement of :meth:`new_ids` drafted in a helper as if none of its records existed.

        None if no helper is available. Raises ``HashfedError`` if the
        statement is refused whole.
        """
        outcome = await self._in_helper(_draft_in_helper, statement, principal, policy)
        return outcome if isinstance(outcome, NewDraft) else None

    async def _in_helper(self, task: Any, statement: SignedStatement, *args: Any) -> Any:
        """``task(statement id, bytes, *args)`` in a helper; None if none is available.

        Raises the ``HashfedError`` the task refused the statement with.
        """
        loop = asyncio.get_running_loop()
        pool = self._executor()
        try:
            outcome = await loop.run_in_executor(
                pool, task, statement.id, statement.signed_bytes, *args
            )
        except (BrokenProcessPool, OSError) as exc:  # died, or could not be started
            log.warning("item-checking helper unavailable (%s); checking in-process", exc)
            self._discard(pool)
            return None
        if isinstance(outcome, tuple):
            problem, detail, extra = outcome
            raise HashfedError(Problem[problem], detail, **extra)
        return outcome

    def _discard(self, broken: ProcessPoolExecutor) -> None:
        # Only the pool that failed: another request may have started a new one since.
        if self._pool is broken:
            self._pool = None
            broken.shutdown(wait=False, cancel_futures=True)

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


Refusal = tuple[str, str, dict[str, Any]]  # a HashfedError's arguments: it does not pickle
Labels = tuple[tuple[str, str], ...]


@functools.lru_cache(maxsize=8)
def _taxonomy(labels: Labels) -> Taxonomy:
    return Taxonomy(dict(labels))


# Statements checked here (by id and taxonomy), each without its items and
# bytes, and their checked items: after new_ids, the server asks once more
# (draft_new or prepare), with other statements' requests in between when
# several are in flight; that question takes the entry out. At most
# CHECKED_KEPT are kept, in case a server never asks again.
_checked: OrderedDict[tuple[str, Labels], tuple[SignedStatement, Prepared]] = OrderedDict()
CHECKED_KEPT = 4


def _checked_statement(
    statement_id: str, signed_bytes: bytes, labels: Labels
) -> tuple[SignedStatement, Prepared]:
    """In the helper: the statement (already opened and verified) and its checked items."""
    key = (statement_id, labels)
    kept = _checked.get(key)
    if kept is not None:
        _checked.move_to_end(key)
        return kept
    line_end = signed_bytes.index(b"\n")
    payload = orjson.loads(signed_bytes[line_end + 1 :])
    statement = SignedStatement(
        id=statement_id,
        type=str(payload["type"]),
        signed_bytes=signed_bytes,
        signature=b"",
        payload=payload,
    )
    prepared = prepare(statement, _taxonomy(labels))
    header = {name: value for name, value in payload.items() if name != "items"}
    light = dataclasses.replace(statement, signed_bytes=b"", payload=header)
    kept = _checked[key] = (light, prepared)
    while len(_checked) > CHECKED_KEPT:
        _checked.popitem(last=False)
    return kept


def _ids_in_helper(statement_id: str, signed_bytes: bytes, labels: Labels) -> list[str] | Refusal:
    try:
        _, prepared = _checked_statement(statement_id, signed_bytes, labels)
        return [item.record_id for item in prepared.items]
    except HashfedError as err:
        return err.problem.name, err.detail, err.extra


def _prepare_in_helper(
    statement_id: str, signed_bytes: bytes, labels: Labels
) -> Prepared | Refusal:
    try:
        prepared = _checked_statement(statement_id, signed_bytes, labels)[1]
        _checked.pop((statement_id, labels), None)  # the last question about it
        return prepared
    except HashfedError as err:
        return err.problem.name, err.detail, err.extra


def _draft_in_helper(
    statement_id: str, signed_bytes: bytes, principal: Principal, policy: PolicyInForce
) -> NewDraft | Refusal:
    labels = tuple(policy.taxonomy.labels.items())
    try:
        statement, prepared = _checked_statement(statement_id, signed_bytes, labels)
        _checked.pop((statement_id, labels), None)  # the last question about it
        return draft_as_new(statement, principal, prepared, policy, int(time.time()))
    except HashfedError as err:
        return err.problem.name, err.detail, err.extra
