"""What every member command shares: the profile, the client, output and errors."""

from __future__ import annotations

import asyncio
import functools
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import click
import orjson
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from clients.client import FederationClient, Identity
from clients.errors import (
    FederationError,
    ForbiddenRole,
    KeyRetired,
    KeyRevoked,
    NotFound,
    OrgSuspended,
    SignatureExpired,
    UnknownKey,
)
from clients.profiles import Profile, ProfileStore
from clients.store import StoreError
from clients.verify import HistoryChanged, UntrustedCheckpoint
from federation.protocol.keys import load_private_key

P = ParamSpec("P")
T = TypeVar("T")

# Exit statuses shared by all commands (scripts rely on them).
EXIT_OK = 0
EXIT_FAILURE = 1  # the command ran and found a problem (e.g. refused items)
EXIT_USAGE = 2  # click's own code for bad flags
EXIT_SERVER = 3  # the server refused or could not be reached

console = Console(stderr=True)  # progress and messages; stdout is for results
out = Console()


class Ctx:
    """Per-invocation state stored on click's context object."""

    def __init__(self, profile_name: str | None = None, as_json: bool = False) -> None:
        self.profile_name = profile_name
        self.as_json = as_json
        self.profiles = ProfileStore()

    @functools.cached_property
    def profile(self) -> Profile:
        return self.profiles.get(self.profile_name)

    def client(self, **kwargs: Any) -> FederationClient:
        """The profile's client (not yet opened: use ``async with``)."""
        profile = self.profile
        identity = load_identity(profile.org, Path(profile.key).expanduser())
        return FederationClient(profile.server, identity, **kwargs)


pass_ctx = click.make_pass_decorator(Ctx)


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine for a command, turning server problems into clear exits."""
    try:
        return asyncio.run(coro)
    except FederationError as err:
        hint = next_step(err)
        detail = err.detail if not hint or hint in err.detail else f"{err.detail}; {hint}"
        console.print(f"[bold red]error:[/] {escape(detail)}", soft_wrap=True)
        console.print(f"[dim]{err.problem.uri} (HTTP {err.http_status})[/]")
        sys.exit(EXIT_SERVER)
    except (HistoryChanged, UntrustedCheckpoint) as err:
        console.print(f"[bold red]error:[/] {err}")
        sys.exit(EXIT_SERVER)
    except StoreError as err:
        console.print(f"[bold red]error:[/] {err}")
        sys.exit(EXIT_FAILURE)
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/]")
        sys.exit(130)


def async_command(fn: Callable[P, Awaitable[T]]) -> Callable[P, T]:
    """Decorate an ``async def`` click callback so it runs under :func:`run`."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        return run(fn(*args, **kwargs))  # type: ignore[arg-type]

    return wrapper


def emit_json(data: Any) -> None:
    """Print machine-readable output (for ``--json``) on stdout."""
    sys.stdout.buffer.write(orjson.dumps(data, option=orjson.OPT_INDENT_2) + b"\n")
    sys.stdout.flush()


def table(title: str | None, columns: list[str], rows: list[list[Any]]) -> None:
    """Print a table of results on stdout (cells shown literally, never read as markup)."""
    literal_table(title, columns, rows)


def _set_profile(ctx: click.Context, _param: click.Parameter, value: str | None) -> None:
    if value:
        ctx.ensure_object(Ctx).profile_name = value


def _set_json(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if value:
        ctx.ensure_object(Ctx).as_json = True


def common_options(fn: Callable[P, T]) -> Callable[P, T]:
    """``--profile`` and ``--json`` on a subcommand (as well as on ``hashfed`` itself)."""
    fn = click.option(
        "--json",
        "as_json_local",
        is_flag=True,
        expose_value=False,
        callback=_set_json,
        help="Machine-readable output on stdout",
    )(fn)
    return click.option(
        "--profile",
        "profile_local",
        expose_value=False,
        callback=_set_profile,
        help="Profile to use (default: HASHFED_PROFILE, then the default profile)",
    )(fn)


# Shared by the member commands.


def load_identity(org: str, path: Path) -> Identity:
    """The identity for ``org`` with the private key at ``path``; clear errors, no secrets shown."""
    try:
        return Identity(org, load_private_key(path))
    except FileNotFoundError:
        raise click.ClickException(
            f"key file {path} not found; create one with 'hashfed keys generate --out {path}'"
        ) from None
    except PermissionError:
        raise click.ClickException(f"key file {path} is not readable by this user") from None
    except (ValueError, TypeError):
        # cryptography's messages may quote the file; say only what to do.
        raise click.ClickException(
            f"{path} is not an unencrypted Ed25519 private key in PEM form; "
            "pass the file written by 'hashfed keys generate --out FILE' (not FILE.pub)"
        ) from None


def open_client(ctx: Ctx, **kwargs: Any) -> FederationClient:
    """The profile's client (not yet opened: use ``async with``)."""
    return ctx.client(**kwargs)


def next_step(err: FederationError) -> str | None:
    """What the user can do about a refusal, in one sentence."""
    if isinstance(err, KeyRevoked | KeyRetired):
        return (
            "this profile's key can no longer sign: make a new one with 'hashfed keys generate', "
            "have governance register it ('hashfed keys add'), then point the profile at it "
            "('hashfed profile add NAME --key FILE …')"
        )
    if isinstance(err, UnknownKey):
        return (
            "check that the profile points at the right server and key ('hashfed profile show'), "
            "or ask governance to register the key"
        )
    if isinstance(err, ForbiddenRole):
        return (
            "use a profile of an organisation that holds that role (--profile NAME), "
            "or ask governance to grant it"
        )
    if isinstance(err, OrgSuspended):
        return "ask the federation's governance to reinstate the organisation"
    if isinstance(err, SignatureExpired):
        return "check this machine's clock (requests carry their creation time)"
    if isinstance(err, NotFound):
        return "check the organisation or key id ('hashfed orgs list')"
    return None


@asynccontextmanager
async def explained() -> AsyncIterator[None]:
    """Add :func:`next_step` to a server refusal's message before it reaches the user."""
    try:
        yield
    except FederationError as err:
        hint = next_step(err)
        if hint and hint not in err.detail:
            err.detail = f"{err.detail.rstrip('.')}; {hint}"
        raise


def say(message: str) -> None:
    """A message on stderr (rich markup allowed), never broken into lines by width."""
    console.print(message, soft_wrap=True, highlight=False)


def literal_table(
    title: str | None,
    columns: list[str],
    rows: list[list[Any]],
    *,
    whole: Sequence[str] = (),
) -> None:
    """A results table on stdout, every cell shown literally (never read as markup).

    Cells of the ``whole`` columns (ids people copy) are never cut; others fold.
    """
    grid = Table(title=title)
    for index, name in enumerate(columns):
        if name in whole:
            widest = max(
                (len(str(row[index])) for row in rows if row[index] is not None), default=0
            )
            grid.add_column(name, no_wrap=True, min_width=widest)
        else:
            grid.add_column(name, overflow="fold")
    for row in rows:
        grid.add_row(*(Text("" if v is None else str(v)) for v in row))
    out.print(grid)
