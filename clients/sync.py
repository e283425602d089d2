"""A blocking facade over :class:`~clients.client.FederationClient`, for scripts.

::

    from clients.sync import FederationClientSync

    with FederationClientSync("https://hashfed.example", identity) as fed:
        print(fed.me()["roles"])
        fed.submit([{"signal_type": "md5", "value": "…", "labels": ["recruitment"]}])
        for version in fed.stream_feed():
            ...

The async client runs on an event loop in a private daemon thread, so the
facade works from any thread, including one whose own event loop is running
(a notebook), where ``asyncio.run`` would refuse. Calls block until the
server answers; errors are the same typed exceptions (``clients.errors``).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine, Iterator, Mapping, Sequence
from concurrent.futures import Future
from types import TracebackType
from typing import Any, TypeVar

from clients.client import (
    DEFAULT_RETRIES,
    DEFAULT_TIMEOUT_S,
    FederationClient,
    Identity,
    Response,
)
from federation.protocol.statements import SignedStatement

T = TypeVar("T")

__all__ = ["FederationClientSync"]


class FederationClientSync:
    """The federation client's methods, synchronously.

    Opens at construction; call :meth:`close` (or use ``with``) when done.
    Retries, signing and idempotency are those of :class:`FederationClient`.
    """

    def __init__(
        self,
        server: str,
        identity: Identity,
        *,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        retries: int = DEFAULT_RETRIES,
    ) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="hashfed-client", daemon=True
        )
        self._thread.start()
        self._client = FederationClient(server, identity, timeout_s=timeout_s, retries=retries)
        self._closed = False
        try:
            self._call(self._client.__aenter__())
        except BaseException:
            self._stop_loop()
            raise

    # Lifecycle

    def __enter__(self) -> FederationClientSync:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the HTTP session and stop the private event loop; safe to call twice."""
        if self._closed:
            return
        self._closed = True
        try:
            self._run(self._client.close())
        finally:
            self._stop_loop()

    def _stop_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        if threading.current_thread() is self._thread:
            coro.close()
            raise RuntimeError("FederationClientSync cannot be called from its own event loop")
        future: Future[T] = asyncio.run_coroutine_threadsafe(coro, self._loop)
        return future.result()

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        if self._closed:
            coro.close()
            raise RuntimeError("this FederationClientSync is closed; create a new one")
        return self._run(coro)

    @property
    def identity(self) -> Identity:
        """Who the client acts as."""
        return self._client.identity

    @property
    def server(self) -> str:
        """The federation's base URL."""
        return str(self._client.server)

    @property
    def client(self) -> FederationClient:
        """The wrapped async client (to be used only on this facade's loop)."""
        return self._client

    # Transport

    def request(
        self,
        method: str,
        path: str,
        *,
        body: bytes | None = None,
        params: Mapping[str, str | int] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Response:
        """Send a signed request, retrying transient failures; raise the typed problem."""
        return self._call(
            self._client.request(method, path, body=body, params=params, headers=headers)
        )

    def get_json(self, path: str, params: Mapping[str, str | int] | None = None) -> Any:
        """GET ``path`` (signed) and decode the JSON answer."""
        return self._call(self._client.get_json(path, params))

    def sign(self, payload: dict[str, Any]) -> SignedStatement:
        """Sign a statement payload as this client's organisation and key (no I/O)."""
        return self._client.sign(payload)

    def send_statement(self, path: str, statement: SignedStatement) -> dict[str, Any]:
        """POST a signed statement's envelope; idempotent, so retried freely."""
        return self._call(self._client.send_statement(path, statement))

    # Reading

    def me(self) -> dict[str, Any]:
        """Who the server thinks we are, and the log's size."""
        return self._call(self._client.me())

    def feed_page(self, after: str | None = None, limit: int = 1000) -> dict[str, Any]:
        """One JSON page of the feed: ``{"items", "next_cursor", "has_more"}``."""
        return self._call(self._client.feed_page(after, limit))

    def stream_feed(
        self, after: str | None = None, limit: int | None = None
    ) -> Iterator[dict[str, Any]]:
        """Iterate over the NDJSON feed stream: versions, then the ``end`` trailer.

        A stream that stops before its trailer raises ``TransportError``. Close
        the iterator (or exhaust it) before closing the client.
        """
        # stream_feed is an async generator; typed as an iterator, so close it via aclose if any.
        stream = self._client.stream_feed(after, limit)

        async def following() -> dict[str, Any] | None:
            try:
                return await anext(stream)
            except StopAsyncIteration:
                return None

        try:
            while (item := self._call(following())) is not None:
                yield item
        finally:
            aclose = getattr(stream, "aclose", None)
            if aclose is not None and not self._closed:
                self._run(aclose())

    def get_record(self, record_id: str) -> dict[str, Any]:
        """A record's current state."""
        return self._call(self._client.get_record(record_id))

    def list_orgs(self) -> list[dict[str, Any]]:
        """Every organisation with its keys (admin or auditor)."""
        return self._call(self._client.list_orgs())

    # Writing

    def submit(self, items: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        """Push one signed batch of submissions; per-item results come back."""
        return self._call(self._client.submit(items))

    def withdraw(
        self, items: Sequence[Mapping[str, str]], reason: str | None = None
    ) -> dict[str, Any]:
        """Withdraw this organisation's contributions to the given signals."""
        return self._call(self._client.withdraw(items, reason))

    def admit_org(
        self, org: str, name: str, roles: Sequence[str], public_key: Any
    ) -> dict[str, Any]:
        """Admit an organisation with its first public key (admin)."""
        return self._call(self._client.admit_org(org, name, roles, public_key))

    def set_org_status(self, org: str, *, suspend: bool, note: str = "") -> dict[str, Any]:
        """Suspend or reinstate an organisation (admin)."""
        return self._call(self._client.set_org_status(org, suspend=suspend, note=note))

    def add_key(self, org: str, public_key: Any) -> dict[str, Any]:
        """Register another public key for ``org`` (admin)."""
        return self._call(self._client.add_key(org, public_key))

    def set_key_status(self, org: str, kid: str, *, revoke: bool, note: str = "") -> dict[str, Any]:
        """Retire (after rotation) or revoke (compromise) a key of ``org`` (admin)."""
        return self._call(self._client.set_key_status(org, kid, revoke=revoke, note=note))
