"""What every member command shares: the profile, the client, output and errors."""

from __future__ import annotations

import asyncio
import functools
import sys
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, ParamSpec, TypeVar

import click
import orjson
from rich.console import Console
from rich.table import Table

from clients.client import FederationClient
from clients.errors import FederationError
from clients.profiles import Profile, ProfileStore
from clients.store import StoreError
from clients.verify import HistoryChanged, UntrustedCheckpoint

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
        profile = self.profile
        return FederationClient(profile.server, profile.identity(), **kwargs)


pass_ctx = click.make_pass_decorator(Ctx)


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine for a command, turning server problems into clear exits."""
    try:
        return asyncio.run(coro)
    except FederationError as err:
        console.print(f"[bold red]error:[/] {err.detail}")
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
    """Print a table of results on stdout."""
    t = Table(title=title, show_lines=False)
    for column in columns:
        t.add_column(column)
    for row in rows:
        t.add_row(*("" if v is None else str(v) for v in row))
    out.print(t)


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
