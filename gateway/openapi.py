"""The OpenAPI document as clients and API testers need it: every error in the one
problem+json shape (FastAPI's own 422 validation answer is replaced by the 400 the
gateway really sends), a `default` problem response on every operation (429, 5xx),
and the bearer security scheme."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic.json_schema import models_json_schema

from gateway.errors import ProblemDetails, problem_response_doc

_FASTAPI_VALIDATION_SCHEMAS = ("HTTPValidationError", "ValidationError")


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
    for path_item in schema.get("paths", {}).values():
        for operation in path_item.values():
            responses = operation.setdefault("responses", {})
            if responses.pop("422", None) is not None and "400" not in responses:
                responses["400"] = problem_response_doc("Invalid request (field violations)")
            responses.setdefault("default", problem_response_doc(
                "Any other error: 429 rate limited, 413 body too large, 5xx"))
    return schema
