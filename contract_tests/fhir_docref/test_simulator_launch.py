"""The FHIR simulator's SMART EHR launch against the SMART App Launch 2.2 rules it was
written from: discovery, the authorize checks (registered client and redirect URI, aud,
S256 PKCE, launch), the code grant (once, the verifier, the same redirect URI) and the
id_token (RS256 by the published key, iss, aud, fhirUser). No client code of ours is used."""
from __future__ import annotations

import base64
import hashlib
import secrets
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from joserfc import jwt
from joserfc.jwk import KeySet

from contract_tests.fhir_docref.simulator import FhirSimulator

APP, REDIRECT = "recorder-app", "https://app.example/callback"


@pytest.fixture
def sim():
    s = FhirSimulator("us-core")
    s.start()
    s.launch.register_app(APP, [REDIRECT])
    yield s
    s.stop()


def authorize(sim, handle, **over):
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    params = {"response_type": "code", "client_id": APP, "redirect_uri": REDIRECT,
              "scope": "launch openid fhirUser", "state": "s1", "aud": sim.base_url,
              "launch": handle, "code_challenge": challenge, "code_challenge_method": "S256",
              "nonce": "n1"}
    params.update(over)
    answer = httpx.get(sim.launch.authorize_url, params={k: v for k, v in params.items() if v is not None})
    query = parse_qs(urlsplit(answer.headers.get("Location", "")).query)
    return answer, {k: v[0] for k, v in query.items()}, verifier


def token(sim, code, verifier, **over):
    form = {"grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT,
            "client_id": APP, "code_verifier": verifier, **over}
    return httpx.post(sim.token_url, data=form)


def test_discovery_offers_the_ehr_launch_beside_backend_services(sim):
    doc = httpx.get(sim.base_url + "/.well-known/smart-configuration").json()
    assert doc["authorization_endpoint"] == sim.launch.authorize_url
    assert doc["token_endpoint"] == sim.token_url
    assert doc["code_challenge_methods_supported"] == ["S256"]
    assert {"launch-ehr", "client-public", "context-ehr-encounter", "sso-openid-connect"} <= set(doc["capabilities"])
    assert doc["grant_types_supported"] == ["client_credentials", "authorization_code"]
    assert httpx.get(doc["jwks_uri"]).json()["keys"][0]["kty"] == "RSA"


def test_code_grant_returns_context_and_a_verifiable_id_token_once(sim):
    launch = sim.launch.new_launch(patient="p1", encounter="e1", user="Practitioner/d1", name="Dr. D")
    answer, query, verifier = authorize(sim, launch)
    assert answer.status_code == 302 and query["state"] == "s1" and query["code"]
    first = token(sim, query["code"], verifier)
    assert first.status_code == 200 and first.headers["Cache-Control"] == "no-store"
    body = first.json()
    assert (body["patient"], body["encounter"], body["token_type"]) == ("p1", "e1", "Bearer")
    keys = KeySet.import_key_set(httpx.get(sim.launch.jwks_uri).json())
    claims = jwt.decode(body["id_token"], keys, algorithms=["RS256"]).claims
    assert claims["iss"] == sim.launch.issuer and claims["aud"] == APP and claims["nonce"] == "n1"
    assert claims["fhirUser"] == sim.base_url + "/Practitioner/d1" and claims["name"] == "Dr. D"
    # the same code again is refused, and so is its token afterwards
    again = token(sim, query["code"], verifier)
    assert again.status_code == 400 and again.json()["error"] == "invalid_grant"
    assert sim.launch.access_token_info(body["access_token"]) is None


@pytest.mark.parametrize("over, error", [
    ({"aud": "https://other.example/fhir"}, "invalid_request"),
    ({"code_challenge_method": "plain"}, "invalid_request"),
    ({"launch": "unknown"}, "invalid_request"),
    ({"scope": "openid fhirUser"}, "invalid_request"),
    ({"response_type": "token"}, "unsupported_response_type"),
])
def test_authorize_errors_are_redirected_with_the_state(sim, over, error):
    launch = sim.launch.new_launch(patient="p1", encounter="e1")
    answer, query, _ = authorize(sim, launch, **over)
    assert answer.status_code == 302 and query["error"] == error and query["state"] == "s1"


def test_an_unregistered_client_or_redirect_is_answered_not_redirected(sim):
    launch = sim.launch.new_launch(patient="p1")
    for over in ({"client_id": "stranger"}, {"redirect_uri": "https://evil.example/cb"}):
        answer, _, _ = authorize(sim, launch, **over)
        assert answer.status_code == 400 and "Location" not in answer.headers


def test_a_wrong_verifier_or_redirect_uri_gets_no_token(sim):
    launch = sim.launch.new_launch(patient="p1", encounter="e1")
    _, query, verifier = authorize(sim, launch)
    assert token(sim, query["code"], "x" * 50).json()["error"] == "invalid_grant"
    _, query, verifier = authorize(sim, launch)
    assert token(sim, query["code"], verifier, redirect_uri="https://app.example/other").status_code == 400
