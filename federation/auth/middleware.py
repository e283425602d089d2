"""Request authentication: RFC 9421 signatures, RFC 9530 digests, replay protection.

Order matters for both the answer and the side effects: the signature is
checked before the body digest (so a tampered body is told apart from a forged
signature), and the nonce is stored only once the signature verified (so a
forger cannot burn nonces).
"""

from __future__ import annotations

import time

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from federation.auth.nonces import NonceStore
from federation.identities.cache import KeyCache
from federation.identities.service import KEY, Principal, check_key_usable, key_info
from federation.log.feed import HEAD
from federation.protocol.httpsig import (
    RequestParts,
    check_coverage,
    parse_signature_headers,
    verify_content_digest,
    verify_request,
)
from federation.protocol.problems import HashfedError, Problem
from federation.store.db import Database

PUBLIC_PATHS = frozenset({"/healthz", "/v1/openapi.json"})
MAX_NONCE_CHARS = 128
PRINCIPAL = web.RequestKey("principal", Principal)
# The log's size read with the identities counter; handlers may use it as "latest".
LOG_SIZE = web.RequestKey("log_size", int)


def request_parts(request: web.Request) -> RequestParts:
    url = request.rel_url
    return RequestParts(
        method=request.method,
        authority=request.host,
        path=url.raw_path,
        query=url.raw_query_string,
        headers=request.headers,
        scheme=request.scheme,
    )


async def authenticate(
    request: web.Request, db: Database, seen: NonceStore, window_s: int, keys: KeyCache
) -> Principal:
    """Verify the request's signature; returns who signed it or raises ``HashfedError``."""
    params, signature = parse_signature_headers(
        request.headers.get("Signature-Input"), request.headers.get("Signature")
    )
    body = await request.read()
    check_coverage(params, has_body=bool(body))
    assert params.created is not None and params.keyid is not None and params.nonce is not None
    now = int(time.time())
    if abs(now - params.created) > window_s:
        raise HashfedError(
            Problem.SIGNATURE_EXPIRED,
            f"signature created {now - params.created} s from the server's clock; the window "
            f"is {window_s} s — check the client's clock and sign again",
        )
    if params.expires is not None and params.expires < now:
        raise HashfedError(Problem.SIGNATURE_EXPIRED, "signature has expired")
    if len(params.nonce) > MAX_NONCE_CHARS:
        raise HashfedError(Problem.SIGNATURE_MALFORMED, f"nonce longer than {MAX_NONCE_CHARS}")
    # One point read: the log head. The key comes from the cache unless an
    # organisation or key changed since it was cached (federation/identities/cache.py).
    head = await db.point.first(HEAD)
    assert head is not None
    size, identities = int(head[0]), int(head[1])
    info = keys.get(identities, params.keyid)
    if info is None:
        info = key_info(await db.point.first(KEY, kid=params.keyid))
        if info is not None:
            keys.put(identities, info)
    info = check_key_usable(info, params.keyid)
    verify_request(request_parts(request), params, signature, info.public_key)
    if body or "content-digest" in params.components:
        verify_content_digest(request.headers.get("Content-Digest"), body)
    if not await seen.remember(info.key_id, params.nonce, now + 2 * window_s):
        raise HashfedError(
            Problem.NONCE_REPLAYED, "this request was already received (nonce reused)"
        )
    request[LOG_SIZE] = size
    return Principal(org_id=info.org_id, key_id=info.key_id, roles=info.roles)


def auth_middleware(
    db: Database, seen: NonceStore, window_s: int, keys: KeyCache | None = None
) -> Middleware:
    cache = KeyCache() if keys is None else keys

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path not in PUBLIC_PATHS:
            request[PRINCIPAL] = await authenticate(request, db, seen, window_s, cache)
        return await handler(request)

    return middleware


def log_size_of(request: web.Request) -> int | None:
    """The log size read while authenticating this request (None if it was not)."""
    return request.get(LOG_SIZE)


def principal_of(request: web.Request) -> Principal:
    principal: Principal | None = request.get(PRINCIPAL)
    if principal is None:
        raise HashfedError(Problem.SIGNATURE_MISSING, "this endpoint needs a signed request")
    return principal
