"""The OpenAPI 3.1 document, generated from the route table and the pydantic models."""

from __future__ import annotations

import functools
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

import federation
from federation.api import models as m
from federation.api.app import ALL_ROUTES as ROUTES
from federation.protocol.problems import PROBLEM_CONTENT_TYPE, Problem

REF = "#/components/schemas/{model}"
SECURITY_SCHEME = "httpMessageSignature"


def _ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": REF.format(model=model.__name__)}


@functools.cache
def openapi_document() -> dict[str, Any]:
    """The whole document; stable output so that docs/openapi.json can be compared."""
    models: set[type[BaseModel]] = {m.ProblemDetails}
    for route in ROUTES:
        models.update(x for x in (route.request, route.response, route.ndjson) if x is not None)
        if route.ndjson is not None:
            models.add(route.ndjson_item)
    _, schemas = models_json_schema(
        [(model, "validation") for model in sorted(models, key=lambda x: x.__name__)],
        ref_template=REF,
    )
    paths: dict[str, dict[str, Any]] = {}
    for route in ROUTES:
        op: dict[str, Any] = {
            "summary": route.summary,
            "operationId": route.handler.__name__,
            "tags": list(route.tags),
            "responses": _responses(route),
        }
        if route.roles is None:
            op["security"] = []
        else:
            op["description"] = "Roles: " + ", ".join(r.value for r in route.roles) + "."
        params = [
            {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
            for name in route.path_params
        ]
        if route.query is not None:
            for name, prop in route.query.model_json_schema()["properties"].items():
                params.append({"name": name, "in": "query", "required": False, "schema": prop})
        if params:
            op["parameters"] = params
        if route.request is not None:
            op["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": _ref(route.request)}},
            }
        paths.setdefault(route.path, {})[route.method.lower()] = op
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Hashfed federation API",
            "version": federation.__version__,
            "description": (
                "Every request but /healthz and this document is signed with RFC 9421 HTTP "
                "Message Signatures (ed25519) covering @method, @authority, @path, @query and, "
                "with a body, content-digest (RFC 9530), with created, nonce and keyid. Every "
                "write carries a signed statement envelope. Errors are RFC 9457 problem+json; "
                "problem types: " + ", ".join(p.uri for p in Problem) + "."
            ),
        },
        "paths": paths,
        "components": {
            "schemas": schemas["$defs"],
            "securitySchemes": {
                SECURITY_SCHEME: {
                    "type": "apiKey",
                    "in": "header",
                    "name": "Signature",
                    "description": "RFC 9421 signature (see Signature-Input); not a static key.",
                }
            },
        },
        "security": [{SECURITY_SCHEME: []}],
    }


def _responses(route: Any) -> dict[str, Any]:
    ok: dict[str, Any] = {"description": "OK"}
    if route.response is not None:
        content: dict[str, Any] = {"application/json": {"schema": _ref(route.response)}}
        if route.ndjson is not None:
            content["application/x-ndjson"] = {
                "schema": {"type": "string"},
                "description": f"One {route.ndjson_item.__name__} per line, then a "
                f"{route.ndjson.__name__} line",
            }
        ok["content"] = content
    problem = {
        "description": "Problem (RFC 9457)",
        "content": {PROBLEM_CONTENT_TYPE: {"schema": _ref(m.ProblemDetails)}},
    }
    return {str(route.status): ok, "4XX": problem, "5XX": problem}


def render() -> str:
    """The document as docs/openapi.json holds it (sorted keys, two-space indent)."""
    import json

    return json.dumps(openapi_document(), indent=2, sort_keys=True) + "\n"


if __name__ == "__main__":
    import sys

    sys.stdout.write(render())
