"""Run Alembic migrations from code (``hashfed server init``, tests)."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"


def alembic_config(url: str) -> Config:
    """An Alembic config for ``url`` that works from an installed package too."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    cfg.attributes["configure_logging"] = False
    return cfg


def upgrade_to_head(url: str) -> None:
    """Bring the database at ``url`` to the newest schema. Call outside an event loop."""
    command.upgrade(alembic_config(url), "head")
