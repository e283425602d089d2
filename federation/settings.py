"""The one settings object: environment variables ``HASHFED_*`` and CLI flags."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_DATA_DIR = Path("var")


class Settings(BaseSettings):
    """Server settings. Every field reads ``HASHFED_<NAME>`` from the environment."""

    model_config = SettingsConfigDict(env_prefix="HASHFED_", extra="ignore")

    data_dir: Path = Field(
        DEFAULT_DATA_DIR, description="Where the embedded database and keys live"
    )
    database_url: str = Field(
        "",
        description="SQLAlchemy async URL; empty means SQLite at <data_dir>/hashfed.db",
    )
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    workers: int = Field(1, ge=1, le=64)
    origin: str = Field(
        "hashfed.local/federation",
        description="Log origin: the name checkpoints and statements are bound to",
    )
    governance_org: str = "governance"
    auto_approve: bool = Field(
        True,
        description="Seeds the first policy at init: submissions approved without review. "
        "After init the policy in the log decides (change it with a policy.set statement).",
    )
    max_body_bytes: int = Field(64 * 1024 * 1024, ge=1024)
    check_processes: int = Field(
        1,
        ge=0,
        le=64,
        description="Helper processes (per worker) that check the items of big record "
        "statements off the event loop; 0 checks them in the worker itself",
    )
    replay_window_s: int = Field(300, ge=10, le=3600)
    shutdown_timeout_s: float = Field(30.0, ge=0)
    log_level: str = "INFO"

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite+aiosqlite:///{(self.data_dir / 'hashfed.db').resolve()}"

    def prepare_data_dir(self) -> None:
        """Create the data directory (the embedded database and keys live there)."""
        self.data_dir.mkdir(parents=True, exist_ok=True)

    @property
    def keys_dir(self) -> Path:
        return self.data_dir / "keys"

    @property
    def log_key_path(self) -> Path:
        return self.keys_dir / "log.key"

    def governance_key_path(self) -> Path:
        return self.keys_dir / f"{self.governance_org}.key"
