"""The served OpenAPI 3.1 document: generated from the route table and the pydantic models,
with the token endpoint, the error body and every POST's Idempotency-Key."""
from __future__ import annotations

import httpx
import pytest

from tests.api.site import ORG


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_document_describes_every_route_the_token_endpoint_and_the_error_body(site):
    doc = httpx.get(f"{site.url}/orgs/{ORG}/api/v1/openapi.json").json()
    assert doc["openapi"].startswith("3.1") and doc["jsonSchemaDialect"].endswith("2020-12/schema")
    paths = doc["paths"]
    base = "/orgs/{org}/api/v1"
    assert set(paths) == {base + p for p in (
        "/sessions", "/sessions/{session_id}",
        "/sessions/{session_id}/recordings/{version}/chunks/{seq}",
        "/sessions/{session_id}/recordings/{version}", "/sessions/{session_id}/drafts/{version}",
        "/sessions/{session_id}/drafts/{version}/edits",
        "/sessions/{session_id}/drafts/{version}/approval", "/sessions/{session_id}/writes",
        "/token", "/openapi.json")}
    token = paths[base + "/token"]["post"]
    assert "application/x-www-form-urlencoded" in token["requestBody"]["content"]
    schemas = doc["components"]["schemas"]
    assert {"error", "detail", "field"} <= set(schemas["Error"]["properties"])
    ident = schemas["Identifier"]
    assert set(ident["required"]) == {"value", "type"}             # types are never dropped
    for path, ops in paths.items():
        for method, op in ops.items():
            if method == "post" and path != base + "/token":
                header = [p for p in op["parameters"] if p["name"] == "Idempotency-Key"]
                assert header and header[0]["required"], path
                assert {"400", "409", "422"} <= set(op["responses"]), path
            if op["security"]:
                assert {"401", "403", "404"} <= set(op["responses"]), path
    approval = paths[base + "/sessions/{session_id}/drafts/{version}/approval"]["post"]
    assert any(p["name"] == "X-Clinician-Token" for p in approval["parameters"])
    assert httpx.get(f"{site.url}/orgs/no-such-org/api/v1/openapi.json").status_code == 404


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_served_document_is_valid_openapi_3_1(site):
    """Against the OpenAPI 3.1 meta-schema (the one schemathesis ships, with jsonschema-rs):
    an absolute tokenUrl, and every audio type the chunk PUT accepts declared."""
    from schemathesis.specs.openapi.definitions import OPENAPI_31_VALIDATOR

    doc = httpx.get(f"{site.url}/orgs/{ORG}/api/v1/openapi.json").json()
    errors = [f"{list(e.instance_path)}: {e.message}"
              for e in OPENAPI_31_VALIDATOR.iter_errors(doc)]
    assert errors == []
    flow = doc["components"]["securitySchemes"]["clientCredentials"]["flows"]["clientCredentials"]
    assert flow["tokenUrl"] == f"{site.url}/orgs/{ORG}/api/v1/token"
    chunk = doc["paths"]["/orgs/{org}/api/v1/sessions/{session_id}/recordings/{version}/chunks/{seq}"]
    assert {"audio/wav", "audio/webm", "audio/ogg", "audio/mp4"} <= set(
        chunk["put"]["requestBody"]["content"])
