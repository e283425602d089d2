"""Request authentication refusals, over a real socket, on SQLite and PostgreSQL.

Each refusal must carry its problem type and write nothing to the log.
"""

from __future__ import annotations

import time
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp.test_utils import TestServer
from yarl import URL

from clients.client import Identity
from federation.api.app import create_app
from federation.api.context import KEYS
from federation.log.feed import log_size
from federation.protocol.httpsig import RequestParts, content_digest, sign_request
from federation.protocol.keys import generate_private_key
from federation.protocol.problems import PROBLEM_CONTENT_TYPE, Problem
from federation.settings import Settings
from federation.store.db import Database
from tests.conftest import Federation

ITEM = {
    "signal_type": "md5",
    "value": "d41d8cd98f00b204e9800998ecf8427e",
    "labels": ["recruitment"],
}


async def _log_size(fed: Federation) -> int:
    async with fed.db.reading() as conn:
        return await log_size(conn)


def _signed(
    url: URL,
    method: str,
    body: bytes | None,
    identity: Identity,
    *,
    key: Any = None,
    created: int | None = None,
    nonce: str | None = None,
) -> dict[str, str]:
    authority = f"{url.host}:{url.port}"
    headers = {"Host": authority}
    if body is not None:
        headers["Content-Type"] = "application/json"
        headers["Content-Digest"] = content_digest(body)
    parts = RequestParts(method, authority, url.raw_path, url.raw_query_string, headers, "http")
    headers.update(
        sign_request(
            parts, key or identity.private_key, identity.key_id, created=created, nonce=nonce
        )
    )
    return headers


async def _send(
    method: str, url: URL, headers: dict[str, str], body: bytes | None = None
) -> tuple[int, dict[str, Any], str]:
    async with (
        aiohttp.ClientSession() as session,
        session.request(method, url, data=body, headers=headers) as resp,
    ):
        return resp.status, orjson.loads(await resp.read()), resp.headers.get("Content-Type", "")


def _assert_problem(status: int, doc: dict[str, Any], ctype: str, problem: Problem) -> None:
    assert ctype.startswith(PROBLEM_CONTENT_TYPE)
    assert doc["type"] == problem.uri, doc
    assert status == problem.status
    assert doc["detail"]


async def _push_body(fed: Federation, identity: Identity) -> bytes:
    async with fed.client(identity) as client:
        statement = client.sign({"type": "submissions", "items": [ITEM]})
    return statement.envelope().model_dump_json().encode()


@pytest.fixture
async def member(fed: Federation) -> Identity:
    return await fed.admit("acme")


def _push_url(fed: Federation) -> URL:
    return URL(fed.url + "/v1/submissions")


async def test_healthz_needs_no_signature(fed: Federation) -> None:
    status, doc, _ = await _send("GET", URL(fed.url + "/healthz"), {})
    assert (status, doc) == (200, {"status": "ok"})


async def test_unsigned_request_is_refused(fed: Federation) -> None:
    status, doc, ctype = await _send("GET", URL(fed.url + "/v1/feed"), {})
    _assert_problem(status, doc, ctype, Problem.SIGNATURE_MISSING)


async def test_valid_signature_is_accepted(fed: Federation, member: Identity) -> None:
    url = _push_url(fed)
    body = await _push_body(fed, member)
    before = await _log_size(fed)
    status, doc, _ = await _send("POST", url, _signed(url, "POST", body, member), body)
    assert status == 200 and doc["counts"]["accepted"] == 1
    assert await _log_size(fed) == before + 2  # the statement and one version


async def test_forged_signature_is_refused(fed: Federation, member: Identity) -> None:
    url = _push_url(fed)
    body = await _push_body(fed, member)
    before = await _log_size(fed)
    headers = _signed(url, "POST", body, member, key=generate_private_key())
    _assert_problem(*await _send("POST", url, headers, body), Problem.SIGNATURE_INVALID)
    assert await _log_size(fed) == before


async def test_tampered_body_is_refused(fed: Federation, member: Identity) -> None:
    url = _push_url(fed)
    body = await _push_body(fed, member)
    headers = _signed(url, "POST", body, member)
    tampered = body.replace(b'"statement":"', b'"statement":"A', 1)
    before = await _log_size(fed)
    _assert_problem(*await _send("POST", url, headers, tampered), Problem.DIGEST_MISMATCH)
    assert await _log_size(fed) == before


async def test_tampered_path_is_refused(fed: Federation, member: Identity) -> None:
    url = URL(fed.url + "/v1/feed")
    headers = _signed(url, "GET", None, member)
    other = URL(fed.url + "/v1/feed?limit=1")
    _assert_problem(*await _send("GET", other, headers), Problem.SIGNATURE_INVALID)


async def test_replayed_nonce_is_refused(fed: Federation, member: Identity) -> None:
    url = _push_url(fed)
    body = await _push_body(fed, member)
    headers = _signed(url, "POST", body, member)
    status, _, _ = await _send("POST", url, headers, body)
    assert status == 200
    before = await _log_size(fed)
    _assert_problem(*await _send("POST", url, headers, body), Problem.NONCE_REPLAYED)
    assert await _log_size(fed) == before


async def test_stale_and_future_created_are_refused(fed: Federation, member: Identity) -> None:
    url = URL(fed.url + "/v1/feed")
    for created in (int(time.time()) - 1000, int(time.time()) + 1000):
        headers = _signed(url, "GET", None, member, created=created)
        _assert_problem(*await _send("GET", url, headers), Problem.SIGNATURE_EXPIRED)


async def test_unknown_key_is_refused(fed: Federation) -> None:
    stranger = Identity("acme", generate_private_key())
    url = URL(fed.url + "/v1/feed")
    _assert_problem(
        *await _send("GET", url, _signed(url, "GET", None, stranger)), Problem.UNKNOWN_KEY
    )


async def test_revoked_key_is_refused(fed: Federation, member: Identity) -> None:
    async with fed.client(fed.governance) as gov:
        await gov.set_key_status("acme", member.key_id, revoke=True, note="leaked")
    url = _push_url(fed)
    body = await _push_body(fed, member)
    before = await _log_size(fed)
    _assert_problem(
        *await _send("POST", url, _signed(url, "POST", body, member), body), Problem.KEY_REVOKED
    )
    assert await _log_size(fed) == before


async def test_suspended_org_is_refused(fed: Federation, member: Identity) -> None:
    async with fed.client(fed.governance) as gov:
        await gov.set_org_status("acme", suspend=True, note="unpaid")
    url = _push_url(fed)
    body = await _push_body(fed, member)
    before = await _log_size(fed)
    _assert_problem(
        *await _send("POST", url, _signed(url, "POST", body, member), body),
        Problem.ORG_SUSPENDED,
    )
    assert await _log_size(fed) == before
    async with fed.client(fed.governance) as gov:
        await gov.set_org_status("acme", suspend=False)
    status, _, _ = await _send("POST", url, _signed(url, "POST", body, member), body)
    assert status == 200


async def test_wrong_role_is_refused(fed: Federation) -> None:
    consumer = await fed.admit("reader", ("consumer",))
    contributor = await fed.admit("writer", ("contributor",))
    url = _push_url(fed)
    body = await _push_body(fed, consumer)
    before = await _log_size(fed)
    _assert_problem(
        *await _send("POST", url, _signed(url, "POST", body, consumer), body),
        Problem.FORBIDDEN_ROLE,
    )
    feed = URL(fed.url + "/v1/feed")
    _assert_problem(
        *await _send("GET", feed, _signed(feed, "GET", None, contributor)), Problem.FORBIDDEN_ROLE
    )
    admit = URL(fed.url + "/v1/orgs")
    async with fed.client(contributor) as client:
        statement = client.sign(
            {
                "type": "org.admit",
                "subject": "evil",
                "name": "Evil",
                "roles": ["admin"],
                "public_key": "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
            }
        )
    admit_body = statement.envelope().model_dump_json().encode()
    _assert_problem(
        *await _send("POST", admit, _signed(admit, "POST", admit_body, contributor), admit_body),
        Problem.FORBIDDEN_ROLE,
    )
    assert await _log_size(fed) == before


async def test_missing_digest_coverage_is_refused(fed: Federation, member: Identity) -> None:
    url = _push_url(fed)
    body = await _push_body(fed, member)
    authority = f"{url.host}:{url.port}"
    headers = {"Host": authority, "Content-Type": "application/json"}
    parts = RequestParts("POST", authority, url.raw_path, "", headers, "http")
    headers.update(
        sign_request(
            parts,
            member.private_key,
            member.key_id,
            components=("@method", "@authority", "@path", "@query"),
        )
    )
    _assert_problem(*await _send("POST", url, headers, body), Problem.SIGNATURE_MALFORMED)


async def test_oversized_body_is_refused(fed: Federation, member: Identity) -> None:
    settings = Settings(
        data_dir=fed.settings.data_dir,
        database_url=fed.settings.database_url,
        max_body_bytes=4096,
    )
    server = TestServer(create_app(settings, fed.db), host="127.0.0.1")
    await server.start_server()
    try:
        url = URL(str(server.make_url("/v1/submissions")))
        body = b'{"statement":"' + b"A" * 8192 + b'","signature":""}'
        before = await _log_size(fed)
        _assert_problem(
            *await _send("POST", url, _signed(url, "POST", body, member), body),
            Problem.BODY_TOO_LARGE,
        )
        assert await _log_size(fed) == before
    finally:
        await server.close()


async def test_unknown_route_is_a_problem(fed: Federation, member: Identity) -> None:
    url = URL(fed.url + "/v1/nothing-here")
    _assert_problem(*await _send("GET", url, _signed(url, "GET", None, member)), Problem.NOT_FOUND)


class _Worker:
    """Another server process's share of the work: its own app, database handle and caches."""

    def __init__(self, fed: Federation) -> None:
        self.db = Database(fed.settings.database_url)
        self.app = create_app(fed.settings, self.db)
        self.server = TestServer(self.app, host="127.0.0.1")

    async def __aenter__(self) -> _Worker:
        await self.server.start_server()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.server.close()
        await self.db.close()

    def url(self, path: str) -> URL:
        return URL(str(self.server.make_url(path)))


async def _me(url: URL, identity: Identity) -> tuple[int, dict[str, Any], str]:
    return await _send("GET", url, _signed(url, "GET", None, identity))


@pytest.mark.parametrize("change", ["revoke", "retire", "suspend"])
async def test_cached_keys_are_refused_on_the_next_request_in_every_worker(
    fed: Federation, member: Identity, change: str
) -> None:
    """Two workers (separate apps and connections) cache the member's key, then another
    worker (``fed``'s server) applies the change: both refuse the very next request."""
    async with _Worker(fed) as one, _Worker(fed) as two:
        for worker in (one, two):
            for _ in range(2):
                status, doc, _ = await _me(worker.url("/v1/me"), member)
                assert status == 200 and doc["org"] == "acme"
            cache = worker.app[KEYS]
            assert cache.version is not None
            info = cache.get(cache.version, member.key_id)
            assert info is not None and info.status == "active"  # served from the cache
        async with fed.client(fed.governance) as gov:
            if change == "suspend":
                await gov.set_org_status("acme", suspend=True, note="unpaid")
            elif change == "retire":
                await gov.add_key("acme", generate_private_key().public_key())
                await gov.set_key_status("acme", member.key_id, revoke=False)
            else:
                await gov.set_key_status("acme", member.key_id, revoke=True, note="leaked")
        expected = {
            "suspend": Problem.ORG_SUSPENDED,
            "retire": Problem.KEY_RETIRED,
            "revoke": Problem.KEY_REVOKED,
        }[change]
        for worker in (one, two):
            _assert_problem(*await _me(worker.url("/v1/me"), member), expected)
            _assert_problem(*await _me(worker.url("/v1/log/checkpoint"), member), expected)
        if change == "suspend":
            async with fed.client(fed.governance) as gov:
                await gov.set_org_status("acme", suspend=False)
            for worker in (one, two):
                status, _, _ = await _me(worker.url("/v1/me"), member)
                assert status == 200
