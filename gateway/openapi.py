"""The OpenAPI document as clients and API testers need it: every error in the one
problem+json shape (FastAPI's own 422 validation answer is replaced by the 400 the
gateway really sends), a `default` problem response on every operation (429, 5xx),
and the bearer security scheme.

`python -m gateway.openapi [FILE]` writes it without starting anything (`make client`)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic.json_schema import models_json_schema

from gateway.errors import ProblemDetails, problem_response_doc

_FASTAPI_VALIDATION_SCHEMAS = ("HTTPValidationError", "ValidationError")
# On every response (gateway.middleware), so documented on every response.
_REQUEST_ID_HEADER = {
    "description": "The request's id (the caller's X-Request-Id when acceptable, else a new "
                   "one); quote it when reporting a problem",
    "required": True,
    "schema": {"type": "string"},
}
# Every /v1 route is admitted by the Redis rate limiter (gateway.ratelimit): 429 when
# over a limit, 503 when Redis or a service is down; both say when to come back.
_RETRY_AFTER_HEADER = {
    "description": "Seconds to wait before trying again",
    "required": True,
    "schema": {"type": "integer", "minimum": 1},
}
_RETRYABLE = {"429": "Too many requests (rate limited)",
              "503": "Redis or a service is unavailable; retry later"}


def accurate_openapi(app: FastAPI) -> dict[str, Any]:
    schema = get_openapi(title=app.title, version=app.version, summary=app.summary,
                         description=app.description, routes=app.routes)
    components = schema.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    _, problem = models_json_schema([(ProblemDetails, "serialization")],
                                    ref_template="#/components/schemas/{model}")
    schemas.update(problem["$defs"])
    for name in _FASTAPI_VALIDATION_SCHEMAS:
        schemas.pop(name, None)
    headers = components.setdefault("headers", {})
    headers["X-Request-Id"] = _REQUEST_ID_HEADER
    headers["Retry-After"] = _RETRY_AFTER_HEADER
    for path, path_item in schema.get("paths", {}).items():
        for operation in path_item.values():
            responses = operation.setdefault("responses", {})
            if responses.pop("422", None) is not None and "400" not in responses:
                responses["400"] = problem_response_doc("Invalid request (field violations)")
            if path.startswith("/v1/"):
                for status, description in _RETRYABLE.items():
                    responses.setdefault(status, problem_response_doc(description))
            responses.setdefault("default", problem_response_doc(
                "Any other error: 413 body too large, 5xx"))
            for status, response in responses.items():
                added = {"X-Request-Id": {"$ref": "#/components/headers/X-Request-Id"}}
                if status in _RETRYABLE and "problem" in str(response.get("content", "")):
                    added["Retry-After"] = {"$ref": "#/components/headers/Retry-After"}
                responses[status] = {**response, "headers": {**response.get("headers", {}),
                                                             **added}}
    return schema


def document() -> dict[str, Any]:
    """The document as /openapi.json serves it, built without a server (no secrets,
    services or Redis needed): what `make client` and the tests read."""
    from gateway.app import create_app
    from gateway.settings import GatewaySettings

    return create_app(GatewaySettings()).openapi()


def render(doc: dict[str, Any]) -> str:
    """The committed form (client/openapi.json): stable, diff-friendly JSON."""
    return json.dumps(doc, indent=2, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    """`python -m gateway.openapi [FILE]`: writes the document to FILE (stdout: -)."""
    args = sys.argv[1:] if argv is None else argv
    text = render(document())
    if not args or args[0] == "-":
        sys.stdout.write(text)
    else:
        Path(args[0]).write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
