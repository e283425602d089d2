"""The aiohttp application."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from aiohttp import web

from federation.api.context import DB, INTAKE, KEYS, SETTINGS, TILES
from federation.api.errors import problem_middleware
from federation.api.governance import GOVERNANCE_ROUTES
from federation.api.match import MATCH_ROUTES
from federation.api.proofs import PROOF_ROUTES
from federation.api.routes import ROUTES
from federation.auth.middleware import auth_middleware
from federation.auth.nonces import NonceStore, nonce_store_for
from federation.identities.cache import KeyCache
from federation.intake import Intake
from federation.log.checkpoints import CheckpointSigner
from federation.log.tree import TileCache
from federation.records.checking import ItemChecker
from federation.settings import Settings
from federation.store.db import Database

log = logging.getLogger("hashfed.server")
NONCE_SWEEP_S = 60
NONCES = web.AppKey("nonces", NonceStore)
ALL_ROUTES = ROUTES + GOVERNANCE_ROUTES + PROOF_ROUTES + MATCH_ROUTES


def create_app(settings: Settings, db: Database | None = None) -> web.Application:
    """The federation's application; ``db`` is created from settings when not given."""
    database = db or Database(settings.resolved_database_url)
    nonce_store = nonce_store_for(database)
    keys = KeyCache()
    app = web.Application(
        client_max_size=settings.max_body_bytes,
        middlewares=[
            problem_middleware,
            auth_middleware(database, nonce_store, settings.replay_window_s, keys),
        ],
    )
    app[SETTINGS] = settings
    app[KEYS] = keys
    app[TILES] = TileCache()
    app[NONCES] = nonce_store
    app[DB] = database
    signer = CheckpointSigner.from_file(settings.origin, settings.log_key_path)
    checker = ItemChecker(settings.check_processes)
    app[INTAKE] = Intake(database, signer, checker)
    app.on_cleanup.append(_close_checker)
    for route in ALL_ROUTES:
        app.router.add_route(route.method, route.path, route.handler)
    app.cleanup_ctx.append(_background)
    if db is None:
        app.on_cleanup.append(_close_db)
    return app


async def _sweep_nonces(store: NonceStore) -> None:
    while True:
        await asyncio.sleep(NONCE_SWEEP_S)
        try:
            await store.expire()
        except Exception:  # keep sweeping; a failed sweep only delays cleanup
            log.exception("nonce sweep failed")


async def _background(app: web.Application) -> AsyncIterator[None]:
    task = asyncio.create_task(_sweep_nonces(app[NONCES]))
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def _close_checker(app: web.Application) -> None:
    await asyncio.to_thread(app[INTAKE].checker.close)


async def _close_db(app: web.Application) -> None:
    await app[DB].close()
