"""``hashfed server run``: one process, or N workers sharing a port (SO_REUSEPORT)."""

from __future__ import annotations

import gc
import logging
import multiprocessing
import os
import signal
import sys
import threading
import time
from types import FrameType

from aiohttp import web

from federation.api.app import create_app
from federation.settings import Settings
from federation.store.engine import is_sqlite
from federation.store.migrate import upgrade_to_head

log = logging.getLogger("hashfed.server")
PARENT_CHECK_S = 1.0
GC_THRESHOLDS = (50_000, 50, 100)


def _run_worker(settings: Settings, reuse_port: bool, own_session: bool = False) -> None:
    if own_session:
        # Only the parent gets terminal and process-group signals and forwards each
        # once: a second signal would cut graceful shutdown short.
        os.setsid()
        _watch_parent()
    logging.basicConfig(
        level=settings.log_level, format="%(asctime)s %(process)d %(levelname)s %(message)s"
    )
    app = create_app(settings)
    # Million-item batches allocate millions of short-lived objects; full
    # collections of the long-lived startup heap cost ~17 % of push time.
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
    web.run_app(
        app,
        host=settings.host,
        port=settings.port,
        reuse_port=reuse_port,
        shutdown_timeout=settings.shutdown_timeout_s,
        print=None,
        access_log=log if settings.log_level == "DEBUG" else None,
    )


def _watch_parent() -> None:
    """Shut this worker down gracefully if its parent dies (e.g. SIGKILL)."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(PARENT_CHECK_S)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def run_server(settings: Settings) -> None:
    """Migrate to head and serve until SIGINT/SIGTERM; requests in flight finish first."""
    url = settings.resolved_database_url
    if settings.workers > 1 and is_sqlite(url):
        raise SystemExit(
            "SQLite serves one worker; use --workers 1, or point HASHFED_DATABASE_URL at "
            "PostgreSQL to run several"
        )
    settings.prepare_data_dir()
    upgrade_to_head(url)
    print(
        f"hashfed: serving on http://{settings.host}:{settings.port} "
        f"({settings.workers} worker{'s' if settings.workers > 1 else ''})",
        flush=True,
    )
    if settings.workers == 1:
        _run_worker(settings, reuse_port=False)
        return
    ctx = multiprocessing.get_context("spawn")
    workers = [
        ctx.Process(target=_run_worker, args=(settings, True, True), daemon=False)
        for _ in range(settings.workers)
    ]
    for w in workers:
        w.start()

    def forward(signum: int, _frame: FrameType | None) -> None:
        for w in workers:
            if w.is_alive() and w.pid is not None:
                os.kill(w.pid, signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    for w in workers:
        w.join()
    sys.exit(max((w.exitcode or 0) for w in workers))
