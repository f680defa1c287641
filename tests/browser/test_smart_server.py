"""The Epic simulator's SMART authorization server (EHR launch), checked against the SMART
App Launch rules it was written from: no browser needed, plain HTTP."""
from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from contract_tests.epic_haiku.simulator import EpicSimulator
from contract_tests.epic_haiku.smart import s256

REDIRECT = "http://127.0.0.1:9/cb"
VERIFIER = "v" * 64


@pytest.fixture
def sim():
    with EpicSimulator() as s:
        s.smart.register_app("page", [REDIRECT])
        yield s


def authorize(sim, **override):
    launch = override.pop("launch_ctx", None) or sim.smart.new_launch(patient="P1", encounter="E1")
    params = {"response_type": "code", "client_id": "page", "redirect_uri": REDIRECT,
              "scope": "launch openid fhirUser", "state": "st-1", "aud": sim.smart.fhir_base,
              "launch": launch, "code_challenge": s256(VERIFIER), "code_challenge_method": "S256"}
    params.update(override)
    params = {k: v for k, v in params.items() if v is not None}
    return httpx.get(sim.smart.authorize_url, params=params, follow_redirects=False)


def redirected(resp) -> dict:
    assert resp.status_code == 302
    loc = resp.headers["location"]
    assert loc.startswith(REDIRECT + "?")
    return {k: v[0] for k, v in parse_qs(urlsplit(loc).query).items()}


def token(sim, code, **override):
    form = {"grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT,
            "client_id": "page", "code_verifier": VERIFIER}
    form.update(override)
    return httpx.post(sim.smart.token_url, data={k: v for k, v in form.items() if v is not None})


def test_discovery_names_the_endpoints_and_s256(sim):
    doc = httpx.get(sim.smart.fhir_base + "/.well-known/smart-configuration").json()
    assert doc["authorization_endpoint"] == sim.smart.authorize_url
    assert doc["token_endpoint"] == sim.smart.token_url
    assert doc["code_challenge_methods_supported"] == ["S256"]
    assert {"launch-ehr", "client-public", "context-ehr-patient"} <= set(doc["capabilities"])
    # and the Backend Services discovery at the root is unchanged
    root = httpx.get(sim.base_url + "/.well-known/smart-configuration").json()
    assert root["grant_types_supported"] == ["client_credentials"]


def test_code_exchange_returns_the_launch_context_once(sim):
    # Given an authorized EHR launch
    got = redirected(authorize(sim))
    assert got["state"] == "st-1"
    # When the code is exchanged with the right verifier
    resp = token(sim, got["code"])
    # Then the token response carries patient and encounter, not cached
    body = resp.json()
    assert resp.status_code == 200 and resp.headers["cache-control"] == "no-store"
    assert (body["patient"], body["encounter"], body["token_type"]) == ("P1", "E1", "Bearer")
    # And the code cannot be used again
    again = token(sim, got["code"])
    assert again.status_code == 400 and again.json()["error"] == "invalid_grant"


@pytest.mark.parametrize("override, error", [
    ({"code_challenge_method": "plain"}, "invalid_request"),
    ({"code_challenge_method": None, "code_challenge": None}, "invalid_request"),
    ({"aud": "http://elsewhere.example/fhir"}, "invalid_request"),
    ({"launch_ctx": "not-a-launch"}, "invalid_request"),
    ({"scope": "openid"}, "invalid_request"),
    ({"response_type": "token"}, "unsupported_response_type"),
])
def test_authorize_refusals_redirect_with_error_and_state(sim, override, error):
    got = redirected(authorize(sim, **override))
    assert got["error"] == error and got["state"] == "st-1" and "code" not in got


@pytest.mark.parametrize("override", [{"client_id": "unknown"},
                                      {"redirect_uri": "http://127.0.0.1:9/other"}])
def test_bad_client_or_redirect_is_never_redirected(sim, override):
    resp = authorize(sim, **override)
    assert resp.status_code == 400 and "location" not in resp.headers


@pytest.mark.parametrize("override", [{"code_verifier": "w" * 64},
                                      {"redirect_uri": "http://127.0.0.1:9/other"},
                                      {"client_id": "someone-else"}])
def test_token_refuses_a_wrong_verifier_redirect_or_client(sim, override):
    code = redirected(authorize(sim))["code"]
    resp = token(sim, code, **override)
    assert resp.status_code == 400 and resp.json()["error"] == "invalid_grant"
