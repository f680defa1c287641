"""schemathesis against the API's own served OpenAPI document, over the real server: at
least 1,000 generated requests (valid and invalid), no 5xx, and every answer conforms to the
document (status code declared, content type, body schema). Runs in CI with the suite
(marker `api_fuzz`, about a minute)."""
from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.checks import not_a_server_error
from schemathesis.generation import GenerationMode
from schemathesis.specs.openapi.checks import (content_type_conformance,
                                               response_schema_conformance,
                                               status_code_conformance)

from schemathesis.transport.requests import REQUESTS_TRANSPORT, binary_serializer

from tests.api.site import ORG, session_body, wav

# chunk bodies are raw bytes whatever their audio type (the engine sniffs them)
REQUESTS_TRANSPORT.serializer("audio/wav", "audio/webm", "audio/ogg")(binary_serializer)

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_schema_conformance]
PER_OPERATION = 45          # x 10 operations x (2 modes + 1 with real ids) > 1,000 requests


@pytest.mark.api_fuzz
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_generated_requests_find_no_server_error_and_no_schema_break(site):
    client = site.client()
    sid = client.post("/sessions", session_body("FUZZ-1")).json()["id"]
    assert client.put_chunk(sid, 1, 1, wav(0.5)).status_code == 200
    token = client.token()
    schema = schemathesis.openapi.from_url(f"{site.url}/orgs/{ORG}/api/v1/openapi.json")
    sent = {"n": 0}
    failures = []
    statuses: dict[int, int] = {}

    def run(operation, mode, path_parameters):
        strategy = operation.as_strategy(generation_mode=mode, path_parameters=path_parameters)

        @settings(max_examples=PER_OPERATION, deadline=None, database=None, derandomize=True,
                  suppress_health_check=list(HealthCheck))
        @given(case=strategy)
        def one(case):
            response = case.call(base_url=site.url,
                                 headers={"Authorization": f"Bearer {token}"}, timeout=30)
            sent["n"] += 1
            statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
            try:
                case.validate_response(response, checks=CHECKS)
            except BaseException as exc:  # noqa: BLE001 - collected and reported below
                failures.append(f"{case.method} {case.formatted_path} -> "
                                f"{response.status_code}: {str(exc)[:300]}")
        try:
            one()
        except Unsatisfiable:       # nothing to negate in this operation
            pass

    for result in schema.get_all_operations():
        operation = result.ok()
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            run(operation, mode, {"org": ORG})
        real = {"org": ORG}
        if "{session_id}" in operation.path:
            real["session_id"] = sid
        run(operation, GenerationMode.POSITIVE, real)
    print("schemathesis:", sent["n"], "requests, by status", dict(sorted(statuses.items())))
    assert sent["n"] >= 1000, sent
    assert sum(n for st, n in statuses.items() if st < 300) >= 50, statuses   # not all refusals
    assert not failures, "\n".join(sorted(set(failures))[:20])
