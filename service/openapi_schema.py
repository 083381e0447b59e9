"""What the served OpenAPI schema adds to FastAPI's: links, and this server's own values.

Links say how the id one operation returns is used by the operations that read,
cancel or delete what it made. They document the API's workflows (create a
collection, then reindex, list or delete it; upload, then poll or cancel the job;
create a key, then revoke it) and let a client or a stateful fuzzer follow them
from the schema alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI


@dataclass(frozen=True)
class Link:
    """A link from one response of an operation to another operation."""

    source: tuple[str, str, str]  # method, path, status
    name: str
    target: tuple[str, str]  # method, path
    parameters: dict[str, str]  # target parameter -> runtime expression
    description: str


_COLLECTION = ("POST", "/v1/collections", "201")
_UPLOADED = ("POST", "/v1/documents", "202")

LINKS: tuple[Link, ...] = (
    Link(_COLLECTION, "DeleteCollection", ("DELETE", "/v1/collections/{name}"),
         {"name": "$response.body#/name"}, "delete the collection just created"),
    Link(_COLLECTION, "ReindexCollection", ("POST", "/v1/collections/{name}/reindex"),
         {"name": "$response.body#/name"}, "rebuild the new collection's index"),
    Link(_COLLECTION, "ListCollectionDocuments", ("GET", "/v1/documents"),
         {"collection": "$response.body#/name"}, "the documents of the new collection"),
    Link(_COLLECTION, "ListCollectionJobs", ("GET", "/v1/jobs"),
         {"collection": "$response.body#/name"}, "the uploads into the new collection"),
    Link(_UPLOADED, "GetJob", ("GET", "/v1/jobs/{job_id}"),
         {"job_id": "$response.body#/job_id"}, "poll the upload's job"),
    Link(_UPLOADED, "CancelJob", ("POST", "/v1/jobs/{job_id}/cancel"),
         {"job_id": "$response.body#/job_id"}, "cancel the upload's job"),
    Link(("GET", "/v1/jobs", "200"), "GetNewestJob", ("GET", "/v1/jobs/{job_id}"),
         {"job_id": "$response.body#/jobs/0/id"}, "the newest job listed"),
    Link(("GET", "/v1/jobs", "200"), "CancelNewestJob", ("POST", "/v1/jobs/{job_id}/cancel"),
         {"job_id": "$response.body#/jobs/0/id"}, "cancel the newest job listed"),
    Link(("GET", "/v1/documents", "200"), "DeleteFirstDocument",
         ("DELETE", "/v1/documents/{doc_id}"), {"doc_id": "$response.body#/documents/0/id"},
         "delete the first document listed"),
    Link(("POST", "/v1/search", "200"), "FirstHitContext", ("GET", "/v1/chunks/{chunk_id}/context"),
         {"chunk_id": "$response.body#/results/0/chunk_id"}, "the first hit in its document"),
    Link(("POST", "/v1/keys", "201"), "RevokeKey", ("DELETE", "/v1/keys/{key_id}"),
         {"key_id": "$response.body#/info/id"}, "revoke the key just created"),
    Link(("POST", "/v1/feedback", "201"), "ListFeedback", ("GET", "/v1/feedback"),
         {"collection": "$response.body#/collection", "rating": "$response.body#/rating"},
         "the feedback of the same collection and rating"),
)


def add_links(schema: dict[str, Any], links: tuple[Link, ...] = LINKS) -> dict[str, Any]:
    """Add ``links`` to the responses of an OpenAPI schema, in place; returns it.

    A link whose source or target operation is not in the schema (a router left
    out, such as metrics) is skipped.
    """
    paths = schema.get("paths", {})
    for link in links:
        method, path, status = link.source
        response = paths.get(path, {}).get(method.lower(), {}).get("responses", {}).get(status)
        target = paths.get(link.target[1], {}).get(link.target[0].lower())
        if response is None or target is None or "operationId" not in target:
            continue
        response.setdefault("links", {})[link.name] = {
            "operationId": target["operationId"], "parameters": dict(link.parameters),
            "description": link.description}
    return schema


def constrain_embedder(schema: dict[str, Any], model: str) -> dict[str, Any]:
    """Declare that a new collection's ``embedder`` can only be this server's ``model``
    (with or without ``bundled:``), as ``POST /v1/collections`` enforces; in place."""
    name = model.removeprefix("bundled:")
    request = schema.get("components", {}).get("schemas", {}).get("CreateCollectionRequest", {})
    field = request.get("properties", {}).get("embedder")
    if field is not None:
        choices = [name, f"bundled:{name}"] if model.startswith("bundled:") else [name]
        field["anyOf"] = [{"type": "string", "enum": choices}, {"type": "null"}]
    return schema


# What ``POST /v1/documents`` takes as ``metadata``: a JSON object (sent as a JSON part of the
# form) whose keys are 1-100 characters; PostgreSQL's jsonb holds no NUL characters, at any depth.
_NO_NUL = {"pattern": "^[^\\x00]*$"}
_VALUE_REF = {"$ref": "#/components/schemas/MetadataValue"}
_METADATA_VALUE = {"anyOf": [
    {"type": "string", **_NO_NUL}, {"type": ["number", "boolean", "null"]},
    {"type": "array", "items": _VALUE_REF},
    {"type": "object", "propertyNames": _NO_NUL, "additionalProperties": _VALUE_REF}]}
_METADATA = {"type": "object", "propertyNames": {"minLength": 1, "maxLength": 100, **_NO_NUL},
             "additionalProperties": _VALUE_REF}
_UPLOAD_FORM = "Body_upload_documents_v1_documents_post"


def describe_upload(schema: dict[str, Any]) -> dict[str, Any]:
    """Declare what the upload's form takes, as far as FastAPI cannot; in place.

    At least one file, and ``metadata`` as the JSON object it must be: FastAPI can
    only say "a string", while OpenAPI says an object property of a multipart body is
    sent as an ``application/json`` part, which is what the service reads.
    """
    body = schema.get("components", {}).get("schemas", {}).get(_UPLOAD_FORM, {})
    if "files" in body.get("properties", {}):
        body["properties"]["files"]["minItems"] = 1
    field = body.get("properties", {}).get("metadata")
    if field is not None:
        field["anyOf"] = [dict(_METADATA), {"type": "null"}]
        schema["components"]["schemas"]["MetadataValue"] = dict(_METADATA_VALUE)
        media = schema["paths"]["/v1/documents"]["post"]["requestBody"]["content"]
        media["multipart/form-data"]["encoding"] = {"metadata": {"contentType": "application/json"}}
    return schema


def serve_schema(app: FastAPI, *, embedder_model: str) -> None:
    """Make ``app`` serve its OpenAPI schema with :data:`LINKS` and the server's embedding
    model added (built once, on first use)."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = add_links(FastAPI.openapi(app))
            describe_upload(constrain_embedder(schema, embedder_model))
        assert app.openapi_schema is not None
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
