"""Profiles: which server, which organisation, which key, which local store.

Kept as JSON in ``$HASHFED_HOME/profiles.json`` (default: the platform's
config directory, e.g. ``~/.config/hashfed``). ``--profile`` or
``HASHFED_PROFILE`` picks one; otherwise the default profile is used.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import click

from clients.client import Identity
from federation.protocol.keys import load_private_key

PROFILES_FILE = "profiles.json"


def hashfed_home() -> Path:
    """The client's home: ``$HASHFED_HOME`` or the platform's config directory."""
    env = os.environ.get("HASHFED_HOME")
    return Path(env) if env else Path(click.get_app_dir("hashfed"))


@dataclass(frozen=True)
class Profile:
    name: str
    server: str
    org: str
    key: str  # path to the PEM private key
    store: str  # path to the local SQLite store
    log_key: str | None = None  # the log's verifier key, obtained out of band

    def identity(self) -> Identity:
        """Load the profile's private key (it never leaves this machine)."""
        path = Path(self.key).expanduser()
        try:
            return Identity(self.org, load_private_key(path))
        except FileNotFoundError:
            raise click.ClickException(
                f"profile {self.name!r}: key file {path} not found; fix it with "
                f"'hashfed profile add {self.name} --key FILE …'"
            ) from None


class ProfileStore:
    """Reads and writes the profiles file."""

    def __init__(self, home: Path | None = None) -> None:
        self.home = home or hashfed_home()
        self.path = self.home / PROFILES_FILE

    def _load(self) -> dict[str, object]:
        if not self.path.exists():
            return {"default": None, "profiles": {}}
        data: dict[str, object] = json.loads(self.path.read_text())
        return data

    def _save(self, data: dict[str, object]) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
        tmp.replace(self.path)

    def all(self) -> dict[str, Profile]:
        raw = self._load()["profiles"]
        assert isinstance(raw, dict)
        return {name: Profile(**fields) for name, fields in raw.items()}

    def default_name(self) -> str | None:
        name = self._load().get("default")
        return name if isinstance(name, str) else None

    def add(self, profile: Profile, *, make_default: bool = False) -> None:
        data = self._load()
        profiles = data["profiles"]
        assert isinstance(profiles, dict)
        profiles[profile.name] = asdict(profile)
        if make_default or not data.get("default"):
            data["default"] = profile.name
        self._save(data)

    def get(self, name: str | None) -> Profile:
        """The named profile, else ``HASHFED_PROFILE``, else the default; clear errors."""
        name = name or os.environ.get("HASHFED_PROFILE") or self.default_name()
        profiles = self.all()
        if name is None:
            raise click.ClickException(
                "no profile configured; create one with "
                "'hashfed profile add NAME --server URL --org ORG --key FILE'"
            )
        if name not in profiles:
            known = ", ".join(sorted(profiles)) or "none"
            raise click.ClickException(f"no profile {name!r} (known: {known})")
        return profiles[name]

    def default_store_path(self, name: str) -> Path:
        return self.home / "stores" / f"{name}.db"
