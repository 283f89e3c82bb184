"""``/openapi.json`` (OpenAPI 3.1), built from the operation table and the pydantic models."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from service.api.models import ProblemOut
from service.api.operations import OPERATIONS

REF = "#/components/schemas/{model}"
IDEMPOTENCY_KEY = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": False,
    "schema": {"type": "string", "minLength": 1, "maxLength": 255},
    "description": "Repeats with the same key and request replay the first response "
    "(`Idempotent-Replayed: true`); the same key with another request is a 422; "
    "while the first is still running, a 409.",
}


def _schema(model: type[BaseModel], components: dict[str, Any], mode: str) -> dict[str, str]:
    schema = model.model_json_schema(ref_template=REF, mode=mode)  # type: ignore[arg-type]
    for name, definition in schema.pop("$defs", {}).items():
        components[name] = definition
    components[model.__name__] = schema
    return {"$ref": REF.format(model=model.__name__)}


def build_spec(version: str) -> dict[str, Any]:
    """The OpenAPI document for this service."""
    components: dict[str, Any] = {}
    paths: dict[str, Any] = {}
    for operation in OPERATIONS:
        entry: dict[str, Any] = {
            "operationId": operation.handler.__name__,
            "summary": operation.summary,
            "tags": [operation.tag],
            "responses": {},
        }
        if operation.description:
            entry["description"] = operation.description
        parameters = list(operation.parameters)
        responses = dict(operation.responses)
        if operation.method == "POST":
            parameters.append(IDEMPOTENCY_KEY)
            responses.setdefault(400, ("A malformed request or Idempotency-Key.", ProblemOut))
            responses.setdefault(
                409, ("A conflict with the job's state or a request in progress.", ProblemOut)
            )
            responses.setdefault(422, ("Invalid input, or an Idempotency-Key reused.", ProblemOut))
            responses.setdefault(413, ("The body is larger than the API accepts.", ProblemOut))
        if parameters:
            entry["parameters"] = parameters
        if operation.auth:
            entry["security"] = [{"bearer": []}]
        if operation.upload is not None:
            entry["requestBody"] = {
                "required": True,
                "content": {
                    operation.upload: {
                        "schema": {"type": "string"},
                        "example": operation.upload_example,
                    }
                },
            }
        if operation.request is not None:
            entry["requestBody"] = {
                "required": True,
                "content": {
                    "application/json": {
                        "schema": _schema(operation.request, components, "validation")
                    }
                },
            }
        for status, (description, model) in sorted(responses.items()):
            response: dict[str, Any] = {"description": description}
            if model is not None:
                media = (
                    "application/problem+json"
                    if model.__name__ == "ProblemOut"
                    else operation.media_type
                )
                response["content"] = {
                    media: {"schema": _schema(model, components, "serialization")}
                }
            if status == 303 or (status == 202 and operation.method == "POST"):
                response["headers"] = {"Location": {"schema": {"type": "string"}}}
            entry["responses"][str(status)] = response
        paths.setdefault(operation.path, {})[operation.method.lower()] = entry
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Handover",
            "version": version,
            "description": "Data subject requests (GDPR Art. 15-20): signed, expiring exports "
            "of everything held on a subject, by every processor.",
        },
        "servers": [{"url": "/"}],
        "paths": paths,
        "components": {
            "schemas": dict(sorted(components.items())),
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}
            },
        },
    }
