"""Typed keys for what the application holds."""

from __future__ import annotations

from aiohttp import web

from federation.identities.cache import KeyCache
from federation.intake import Intake
from federation.log.tree import TileCache
from federation.settings import Settings
from federation.store.db import Database

DB = web.AppKey("db", Database)
INTAKE = web.AppKey("intake", Intake)
SETTINGS = web.AppKey("settings", Settings)
KEYS = web.AppKey("keys", KeyCache)
TILES = web.AppKey("tiles", TileCache)
