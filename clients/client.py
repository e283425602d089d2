"""The async federation client: signed requests, signed statements, safe retries."""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import aiohttp
import orjson
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from yarl import URL

from clients.errors import FederationError, TransportError, error_from_problem
from federation.protocol.httpsig import RequestParts, content_digest, sign_request
from federation.protocol.keys import encode_public_key, key_id
from federation.protocol.problems import PROBLEM_CONTENT_TYPE, Problem
from federation.protocol.statements import SignedStatement, StatementType, sign_statement

DEFAULT_TIMEOUT_S = 120.0
DEFAULT_RETRIES = 5
BACKOFF_BASE_S = 0.5
BACKOFF_MAX_S = 30.0
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
NDJSON = "application/x-ndjson"
STREAM_READ_BYTES = 256 * 1024  # decompressed bytes read at a time by stream_feed_lines


@dataclass(frozen=True)
class Identity:
    """Who the client acts as: an organisation and one of its private keys."""

    org: str
    private_key: Ed25519PrivateKey

    @property
    def key_id(self) -> str:
        return key_id(self.private_key.public_key())


@dataclass(frozen=True)
class Response:
    status: int
    headers: Mapping[str, str]
    body: bytes

    def json(self) -> Any:
        return orjson.loads(self.body)


def _authority(url: URL) -> str:
    host = url.raw_host or ""
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    return host if url.port is None or url.is_default_port() else f"{host}:{url.port}"


class FederationClient:
    """An async client for one federation, acting as one organisation.

    Use it as an async context manager. Every request is signed (RFC 9421);
    timeouts, 429 and 5xx answers are retried with exponential backoff,
    honouring ``Retry-After``; writes are safe to retry because the server
    answers a repeated statement with its first result.
    """

    def __init__(
        self,
        server: str,
        identity: Identity,
        *,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        retries: int = DEFAULT_RETRIES,
        session: aiohttp.ClientSession | None = None,
    ) -> None:
        self.server = URL(server.rstrip("/"))
        self.identity = identity
        self.retries = retries
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._session = session
        self._own_session = session is None

    async def __aenter__(self) -> FederationClient:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=self._timeout, auto_decompress=True, raise_for_status=False
            )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        if self._session is not None and self._own_session:
            await self._session.close()
        self._session = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("use FederationClient as 'async with FederationClient(...)'")
        return self._session

    # Transport

    def signed_headers(
        self, method: str, url: URL, body: bytes | None, extra: Mapping[str, str] | None = None
    ) -> dict[str, str]:
        """Headers for one attempt: Host, Content-Digest and a fresh RFC 9421 signature."""
        headers = {"Host": _authority(url), **(extra or {})}
        if body:
            headers["Content-Type"] = "application/json"
            headers["Content-Digest"] = content_digest(body)
        parts = RequestParts(
            method=method,
            authority=headers["Host"],
            path=url.raw_path,
            query=url.raw_query_string,
            headers=headers,
            scheme=url.scheme,
        )
        headers.update(sign_request(parts, self.identity.private_key, self.identity.key_id))
        return headers

    def url(self, path: str, params: Mapping[str, str | int] | None = None) -> URL:
        url = self.server.with_path(self.server.path.rstrip("/") + path, encoded=False)
        return url.with_query({k: str(v) for k, v in params.items()}) if params else url

    async def request(
        self,
        method: str,
        path: str,
        *,
        body: bytes | None = None,
        params: Mapping[str, str | int] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Response:
        """Send a signed request, retrying transient failures; raise the typed problem."""
        url = self.url(path, params)
        attempt = 0
        while True:
            attempt += 1
            delay: float | None = None
            try:
                async with self.session.request(
                    method, url, data=body, headers=self.signed_headers(method, url, body, headers)
                ) as resp:
                    data = await resp.read()
                    if resp.status < 400:
                        return Response(resp.status, dict(resp.headers), data)
                    error = error_for(resp.status, resp.headers.get("Content-Type", ""), data)
                    if resp.status not in RETRY_STATUSES or attempt > self.retries:
                        raise error
                    delay = _retry_after(resp.headers.get("Retry-After"))
            except (TimeoutError, aiohttp.ClientConnectionError) as exc:
                if attempt > self.retries:
                    raise TransportError(
                        f"{method} {url} failed after {attempt} attempts: {exc!r}; "
                        "is the server running and the profile's URL right?"
                    ) from exc
            await asyncio.sleep(delay if delay is not None else _backoff(attempt))

    async def get_json(self, path: str, params: Mapping[str, str | int] | None = None) -> Any:
        return (await self.request("GET", path, params=params)).json()

    async def send_statement(self, path: str, statement: SignedStatement) -> dict[str, Any]:
        """POST a signed statement's envelope; idempotent, so retried freely."""
        body = statement.envelope().model_dump_json().encode()
        result: dict[str, Any] = (await self.request("POST", path, body=body)).json()
        return result

    def sign(self, payload: dict[str, Any]) -> SignedStatement:
        """Sign a statement payload as this client's organisation and key."""
        return sign_statement(
            payload, self.identity.private_key, key_id=self.identity.key_id, org=self.identity.org
        )

    # Reading

    async def me(self) -> dict[str, Any]:
        """Who the server thinks we are, and the log's size."""
        result: dict[str, Any] = await self.get_json("/v1/me")
        return result

    async def feed_page(self, after: str | None = None, limit: int = 1000) -> dict[str, Any]:
        """One JSON page of the feed: ``{"items", "next_cursor", "has_more"}``."""
        params: dict[str, str | int] = {"limit": limit}
        if after:
            params["after"] = after
        result: dict[str, Any] = await self.get_json("/v1/feed", params)
        return result

    async def stream_feed(
        self, after: str | None = None, limit: int | None = None
    ) -> AsyncIterator[dict[str, Any]]:
        """Stream the feed as NDJSON (gzip); yields versions, then the ``end`` trailer.

        A stream that stops before its trailer raises ``TransportError``: the
        caller must not advance its cursor past what it received.
        """
        async with self._feed_stream(after, limit) as resp:
            ended = False
            try:
                async for line in resp.content:
                    if not line.strip():
                        continue
                    item = orjson.loads(line)
                    if item.get("kind") == "end":
                        ended = True
                    yield item
            except aiohttp.ClientPayloadError as exc:
                raise TransportError(f"feed stream broke off: {exc}") from exc
            if not ended:
                raise TransportError("feed stream ended without its trailer (truncated)")

    async def stream_feed_lines(
        self, after: str | None = None, limit: int | None = None
    ) -> AsyncIterator[list[bytes]]:
        """Stream the feed as NDJSON (gzip); yields its raw lines in lists, as they arrive.

        Each line is the exact bytes of one log leaf (a version), and the last
        one the ``end`` trailer; blank lines are passed on. Nothing is decoded:
        this is for bulk consumers (``hashfed pull``) that decode a whole list
        at once and keep the leaf bytes. A stream that breaks off raises
        ``TransportError``; one that ends without its trailer (a last line
        that is not the trailer, or cut short) is the caller's to notice.
        """
        async with self._feed_stream(after, limit) as resp:
            rest = b""
            try:
                async for chunk in resp.content.iter_chunked(STREAM_READ_BYTES):
                    lines = (rest + chunk).split(b"\n")
                    rest = lines.pop()
                    if lines:
                        yield lines
            except aiohttp.ClientPayloadError as exc:
                raise TransportError(f"feed stream broke off: {exc}") from exc
            if rest:
                yield [rest]

    @contextlib.asynccontextmanager
    async def _feed_stream(
        self, after: str | None, limit: int | None
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """The signed NDJSON feed request's response, once its status says it streams."""
        params: dict[str, str | int] = {}
        if after:
            params["after"] = after
        if limit:
            params["limit"] = limit
        url = self.url("/v1/feed", params)
        extra = {"Accept": NDJSON, "Accept-Encoding": "gzip"}
        async with self.session.get(
            url, headers=self.signed_headers("GET", url, None, extra)
        ) as resp:
            if resp.status >= 400:
                raise error_for(
                    resp.status, resp.headers.get("Content-Type", ""), await resp.read()
                )
            yield resp

    async def get_record(self, record_id: str) -> dict[str, Any]:
        result: dict[str, Any] = await self.get_json(f"/v1/records/{record_id}")
        return result

    async def list_orgs(self) -> list[dict[str, Any]]:
        return list((await self.get_json("/v1/orgs"))["orgs"])

    # Writing

    async def submit(self, items: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        """Push one signed batch of submissions; per-item results come back."""
        payload = {"type": StatementType.SUBMISSIONS.value, "items": [dict(i) for i in items]}
        return await self.send_statement("/v1/submissions", self.sign(payload))

    async def withdraw(
        self, items: Sequence[Mapping[str, str]], reason: str | None = None
    ) -> dict[str, Any]:
        """Withdraw this organisation's contributions to the given signals."""
        payload: dict[str, Any] = {
            "type": StatementType.WITHDRAWALS.value,
            "items": [dict(i) for i in items],
        }
        if reason:
            payload["reason"] = reason
        return await self.send_statement("/v1/withdrawals", self.sign(payload))

    async def admit_org(
        self, org: str, name: str, roles: Sequence[str], public_key: Any
    ) -> dict[str, Any]:
        """Admit an organisation with its first public key (admin)."""
        payload = {
            "type": StatementType.ORG_ADMIT.value,
            "subject": org,
            "name": name,
            "roles": sorted(roles),
            "public_key": encode_public_key(public_key),
        }
        return await self.send_statement("/v1/orgs", self.sign(payload))

    async def set_org_status(self, org: str, *, suspend: bool, note: str = "") -> dict[str, Any]:
        """Suspend or reinstate an organisation (admin)."""
        stype = StatementType.ORG_SUSPEND if suspend else StatementType.ORG_REINSTATE
        payload = {"type": stype.value, "subject": org, "note": note}
        action = "suspend" if suspend else "reinstate"
        return await self.send_statement(f"/v1/orgs/{org}/{action}", self.sign(payload))

    async def add_key(self, org: str, public_key: Any) -> dict[str, Any]:
        """Register another public key for ``org`` (admin)."""
        payload = {
            "type": StatementType.KEY_ADD.value,
            "subject": org,
            "public_key": encode_public_key(public_key),
        }
        return await self.send_statement(f"/v1/orgs/{org}/keys", self.sign(payload))

    async def set_key_status(
        self, org: str, kid: str, *, revoke: bool, note: str = ""
    ) -> dict[str, Any]:
        """Retire (after rotation) or revoke (compromise) a key of ``org`` (admin)."""
        stype = StatementType.KEY_REVOKE if revoke else StatementType.KEY_RETIRE
        payload = {"type": stype.value, "subject": org, "key_id": kid, "note": note}
        action = "revoke" if revoke else "retire"
        return await self.send_statement(f"/v1/orgs/{org}/keys/{kid}/{action}", self.sign(payload))

    # Governance

    async def get_policy(self) -> dict[str, Any]:
        """The policy in force: ``{"version", "policy"}``."""
        result: dict[str, Any] = await self.get_json("/v1/policy")
        return result

    async def set_policy(self, policy: Mapping[str, Any], version: int) -> dict[str, Any]:
        """Set policy ``version`` (the current version + 1) to ``policy`` (admin)."""
        payload = {
            "type": StatementType.POLICY_SET.value,
            "version": version,
            "policy": dict(policy),
        }
        return await self.send_statement("/v1/policy", self.sign(payload))

    async def update_policy(self, **changes: Any) -> dict[str, Any]:
        """Change some policy fields, keeping the rest (admin)."""
        current = await self.get_policy()
        return await self.set_policy({**current["policy"], **changes}, current["version"] + 1)

    async def review_queue(self, **filters: str | int) -> dict[str, Any]:
        """One page of the review queue, oldest first (admins, auditors).

        Filters: ``state``, ``signal_type``, ``label``, ``contributor``,
        ``min_age_s``, ``after``, ``limit``.
        """
        result: dict[str, Any] = await self.get_json("/v1/reviews", filters or None)
        return result

    async def review(self, decisions: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        """Sign and send review decisions: ``{"record", "decision", "reason"?, "note"?}`` each."""
        payload = {"type": StatementType.REVIEWS.value, "items": [dict(d) for d in decisions]}
        return await self.send_statement("/v1/reviews", self.sign(payload))

    async def opine(self, opinions: Sequence[Mapping[str, str]]) -> dict[str, Any]:
        """Sign and send opinions: ``{"record", "kind"}`` each (consumers)."""
        payload = {"type": StatementType.OPINIONS.value, "items": [dict(o) for o in opinions]}
        return await self.send_statement("/v1/opinions", self.sign(payload))

    async def open_dispute(self, record: str, reason: str, note: str) -> dict[str, Any]:
        """Dispute an approved record; it is flagged ``disputed`` in the feed at once."""
        payload = {
            "type": StatementType.DISPUTE_OPEN.value,
            "record": record,
            "reason": reason,
            "note": note,
        }
        return await self.send_statement("/v1/disputes", self.sign(payload))

    async def resolve_dispute(
        self, dispute: str, outcome: str, note: str, labels: Sequence[str] | None = None
    ) -> dict[str, Any]:
        """Vote ``uphold`` (optionally relabelling) or ``retract`` on a dispute (admins)."""
        payload: dict[str, Any] = {
            "type": StatementType.DISPUTE_RESOLVE.value,
            "dispute": dispute,
            "outcome": outcome,
            "note": note,
        }
        if labels is not None:
            payload["labels"] = list(labels)
        return await self.send_statement(f"/v1/disputes/{dispute}/resolve", self.sign(payload))

    async def disputes(self, **filters: str) -> list[dict[str, Any]]:
        """Disputes visible to this organisation (``state``, ``record`` filters)."""
        return list((await self.get_json("/v1/disputes", filters or None))["disputes"])

    async def inbox(self, after: str | None = None, limit: int = 100) -> dict[str, Any]:
        """This organisation's notifications after the cursor ``after``."""
        params: dict[str, str | int] = {"limit": limit}
        if after:
            params["after"] = after
        result: dict[str, Any] = await self.get_json("/v1/inbox", params)
        return result


def error_for(status: int, content_type: str, body: bytes) -> FederationError:
    """The typed exception for an error response."""
    if content_type.startswith(PROBLEM_CONTENT_TYPE) or content_type.startswith("application/json"):
        try:
            document = orjson.loads(body)
            if isinstance(document, dict):
                return error_from_problem(document, status)
        except orjson.JSONDecodeError:
            pass
    problem = Problem.INTERNAL if status >= 500 else Problem.MALFORMED_REQUEST
    text = body[:200].decode("utf-8", "replace")
    return error_from_problem({"type": problem.uri, "detail": f"HTTP {status}: {text}"}, status)


def _retry_after(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return min(max(float(value), 0.0), BACKOFF_MAX_S)
    except ValueError:
        return None


def _backoff(attempt: int) -> float:
    ceiling = min(BACKOFF_MAX_S, BACKOFF_BASE_S * 2 ** (attempt - 1))
    return random.uniform(ceiling / 2, ceiling)  # jitter spreads out retrying clients
