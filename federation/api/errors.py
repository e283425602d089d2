"""One middleware turns every refusal into RFC 9457 problem+json."""

from __future__ import annotations

import logging

import orjson
from aiohttp import web
from aiohttp.typedefs import Handler

from federation.api.context import SETTINGS
from federation.protocol.problems import PROBLEM_CONTENT_TYPE, HashfedError, Problem

log = logging.getLogger("hashfed.api")

_HTTP_TO_PROBLEM = {
    404: Problem.NOT_FOUND,
    405: Problem.METHOD_NOT_ALLOWED,
    413: Problem.BODY_TOO_LARGE,
    415: Problem.UNSUPPORTED_MEDIA_TYPE,
    429: Problem.RATE_LIMITED,
}


def problem_response(err: HashfedError, request: web.Request) -> web.Response:
    body = orjson.dumps(err.to_problem_json(instance=request.path))
    return web.Response(body=body, status=err.status, content_type=PROBLEM_CONTENT_TYPE)


@web.middleware
async def problem_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except HashfedError as err:
        return problem_response(err, request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        problem = _HTTP_TO_PROBLEM.get(exc.status, Problem.MALFORMED_REQUEST)
        detail = exc.text or problem.title
        if exc.status == 413:
            detail = (
                f"request body exceeds the limit of {request.app[SETTINGS].max_body_bytes} bytes"
            )
        response = problem_response(HashfedError(problem, detail), request)
        response.set_status(exc.status)
        return response
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return problem_response(
            HashfedError(Problem.INTERNAL, "the server failed; the request may be retried"),
            request,
        )
