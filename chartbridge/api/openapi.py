"""The OpenAPI 3.1 document of the capture API, generated from the route table
(routes.ROUTES) and the pydantic models (models.py). pydantic's JSON Schema is draft 2020-12,
the dialect OpenAPI 3.1 takes as is, so the schemas go in `components.schemas` unchanged.

A small generator of our own rather than a library: the Flask OpenAPI libraries
(flask-smorest, apispec, spectree, flask-openapi3) each bring their own routing or
marshmallow layer, and the API's routes are a plain table already.
"""
from __future__ import annotations

import re

from pydantic.json_schema import models_json_schema

from . import models as m
from .auth import CLINICIAN_HEADER, SCOPES
from .idempotency import HEADER as IDEMPOTENCY_HEADER

REF = "#/components/schemas/{model}"
ERRORS = {
    400: "malformed request: a header (Idempotency-Key, Content-Type), the JSON itself",
    401: "no valid bearer token (or, for an approval, no valid clinician token)",
    403: "the token lacks the scope, or is for another organization",
    404: "no such organization, session, recording version, chunk or draft version",
    409: "conflicts with the stored state (see detail), or the Idempotency-Key is in flight",
    413: "the body is too large",
    422: "a field is invalid (named in `field`), the audio is not audio, or the "
         "Idempotency-Key was used for another body",
    503: "the engine's database cannot be reached; retry after Retry-After",
}


def _schemas() -> dict:
    models = [m.SessionCreate, m.SessionOut, m.RecordingStatusBody, m.RecordingOut,
              m.ChunkAccepted, m.DraftOut, m.Edit, m.ApprovalBody, m.ApprovalOut, m.WritesOut,
              m.Token, m.TokenRequest, m.OAuthError, m.Error]
    _, doc = models_json_schema([(x, "validation" if x in (m.SessionCreate, m.Edit,
                                                           m.ApprovalBody, m.TokenRequest,
                                                           m.RecordingStatusBody)
                                   else "serialization") for x in models], ref_template=REF)
    return doc["$defs"]


def _ref(model) -> dict:
    return {"$ref": REF.format(model=model.__name__)}


def _json(model) -> dict:
    return {"content": {"application/json": {"schema": _ref(model)}}}


def _error(status: int) -> dict:
    return {"description": ERRORS[status], **_json(m.Error)}


def _path_params(rule: str) -> tuple[str, list[dict]]:
    params = [{"name": "org", "in": "path", "required": True,
               "schema": {"type": "string", "pattern": "^[a-z0-9][a-z0-9-]{0,62}$"}}]
    for conv, name in re.findall(r"<(?:(\w+):)?(\w+)>", rule):
        schema = ({"type": "integer", "minimum": 1, "maximum": 10_000} if conv == "int"
                  else {"type": "string", "pattern": "^[A-Za-z0-9._-]{1,64}$"})
        params.append({"name": name, "in": "path", "required": True, "schema": schema})
    return re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule), params


AUDIO_TYPES = ("audio/wav", "audio/webm", "audio/ogg", "audio/mp4", "application/octet-stream")


def document(org: str, public_base: str) -> dict:
    """The document for `org`; `public_base` is the engine's public base URL (absolute),
    since OpenAPI 3.1 requires the OAuth 2.0 tokenUrl to be an absolute URI."""
    from .routes import ROUTES

    base = f"/orgs/{{org}}/api/v1"
    paths: dict[str, dict] = {}
    for r in ROUTES:
        path, params = _path_params(r.path)
        op: dict = {"operationId": r.view.__name__, "summary": r.summary,
                    "security": [{"bearer": []}, {"clientCredentials": [r.scope]}],
                    "parameters": list(params)}
        statuses = {400, 401, 403, 404, 503, *r.errors}
        if r.method == "POST":
            op["parameters"].append({
                "name": IDEMPOTENCY_HEADER, "in": "header", "required": True,
                "description": "unique per operation; the same key and body answer the stored "
                               "response (IETF draft-ietf-httpapi-idempotency-key-header)",
                "schema": {"type": "string", "pattern": "^[\\x21-\\x7e]{1,255}$"}})
            statuses |= {409, 413, 422}
        if CLINICIAN_HEADER in r.headers:
            op["parameters"].append({
                "name": CLINICIAN_HEADER, "in": "header", "required": False,
                "description": "the approving clinician's own ID token from the organization's "
                               "identity provider (sign_in.oidc); needed with a client token",
                "schema": {"type": "string"}})
        if r.body is not None:
            op["requestBody"] = {"required": True, **_json(r.body)}
            statuses |= {413, 422}
        elif r.body_type != "application/json":
            op["requestBody"] = {"required": True, "content": {
                t: {"schema": {"type": "string", "format": "binary"}}
                for t in AUDIO_TYPES}}
            statuses |= {413, 422}
        op["responses"] = {**{str(st): {"description": "OK" if st == r.status else
                                         "the same request already answered (stored state)",
                                         **_json(r.answer)} for st in (r.status, *r.also)},
                           **{str(s): _error(s) for s in sorted(statuses)}}
        paths.setdefault(base + path, {})[r.method.lower()] = op
    paths[base + "/token"] = {"post": {
        "operationId": "token", "summary": "A short-lived bearer token (OAuth 2.0 client "
        "credentials with a private_key_jwt client assertion, RFC 7523)",
        "security": [], "parameters": _path_params("")[1],
        "requestBody": {"required": True, "content": {
            "application/x-www-form-urlencoded": {"schema": _ref(m.TokenRequest)}}},
        "responses": {"200": {"description": "the token", **_json(m.Token)},
                      "400": {"description": "invalid request, grant or scope (RFC 6749 5.2)",
                              **_json(m.OAuthError)},
                      "401": {"description": "the client assertion does not verify",
                              **_json(m.OAuthError)},
                      "404": _error(404), "413": _error(413), "503": _error(503)}}}
    paths[base + "/openapi.json"] = {"get": {
        "operationId": "openapi", "summary": "This document", "security": [],
        "parameters": _path_params("")[1],
        "responses": {"200": {"description": "OpenAPI 3.1",
                              "content": {"application/json": {"schema": {"type": "object"}}}},
                      "404": _error(404), "503": _error(503)}}}
    return {
        "openapi": "3.1.0",
        "jsonSchemaDialect": "https://json-schema.org/draft/2020-12/schema",
        "info": {"title": "Chartbridge capture API", "version": "1",
                 "description": "Ambient capture sessions: open, upload audio chunks, stop, "
                                "read the draft, approve its exact content as the clinician, "
                                "follow the writes to every EHR target."},
        "servers": [{"url": "/", "description": f"this engine (organization {org})"}],
        "paths": paths,
        "components": {
            "schemas": _schemas(),
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "clientCredentials": {"type": "oauth2", "flows": {"clientCredentials": {
                    "tokenUrl": f"{public_base.rstrip('/')}/orgs/{org}/api/v1/token",
                    "scopes": {s: s for s in SCOPES}}}}}},
    }
