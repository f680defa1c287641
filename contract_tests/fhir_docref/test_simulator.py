"""The FHIR simulator enforces the specs it claims (FHIR R4 REST, SMART Backend Services, US Core
writing guidance, Epic Clinical Notes create). Exercised directly with httpx; no adapter code."""
from __future__ import annotations

import base64
import json
import threading
import time
import uuid
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from chartbridge.core.errors import InputError
from contract_tests.fhir_docref.simulator import FhirSimulator

CLIENT = "backend-client-1"
SCOPES = ["system/DocumentReference.c", "system/DocumentReference.rs", "system/DocumentReference.u",
          "system/Provenance.c", "system/Binary.c", "system/Patient.r"]
NOTE_ID_SYSTEM = "urn:chartbridge:write"


# ------------------------------------------------------------------ JOSE helpers (test side)

def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _uint(n: int, size: int | None = None) -> str:
    size = size or (n.bit_length() + 7) // 8
    return _b64url(n.to_bytes(size, "big"))


class Signer:
    def __init__(self, alg: str = "ES384", kid: str = "k1") -> None:
        self.alg, self.kid = alg, kid
        if alg == "ES384":
            self.key = ec.generate_private_key(ec.SECP384R1())
            nums = self.key.public_key().public_numbers()
            self.jwk = {"kty": "EC", "crv": "P-384", "kid": kid, "x": _uint(nums.x, 48),
                        "y": _uint(nums.y, 48)}
        else:
            self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            nums = self.key.public_key().public_numbers()
            self.jwk = {"kty": "RSA", "kid": kid, "n": _uint(nums.n), "e": _uint(nums.e)}

    def sign(self, claims: dict[str, Any], header: dict[str, Any] | None = None) -> str:
        head = {"alg": self.alg, "typ": "JWT", "kid": self.kid, **(header or {})}
        signing_input = f"{_b64url(json.dumps(head).encode())}.{_b64url(json.dumps(claims).encode())}"
        if self.alg == "ES384":
            der = self.key.sign(signing_input.encode(), ec.ECDSA(hashes.SHA384()))
            r, s = decode_dss_signature(der)
            sig = r.to_bytes(48, "big") + s.to_bytes(48, "big")
        else:
            sig = self.key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA384())
        return f"{signing_input}.{_b64url(sig)}"


def claims_for(sim: FhirSimulator, **over: Any) -> dict[str, Any]:
    base = {"iss": CLIENT, "sub": CLIENT, "aud": sim.token_url, "exp": int(time.time()) + 240,
            "jti": uuid.uuid4().hex}
    base.update(over)
    return {k: v for k, v in base.items() if v is not None}


def token_form(assertion: str, scope: str | None = " ".join(SCOPES)) -> dict[str, str]:
    form = {"grant_type": "client_credentials",
            "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            "client_assertion": assertion}
    if scope is not None:
        form["scope"] = scope
    return form


# ------------------------------------------------------------------ fixtures

SIGNER = Signer("ES384")


def _seed(sim: FhirSimulator) -> None:
    sim.reset(keep_seed=False)
    sim.register_client(CLIENT, SIGNER.jwk, SCOPES)
    sim.add_patient("p1")
    sim.add_patient("p2")
    sim.add_encounter("e1", "p1")
    sim.add_encounter("e2", "p2")


@pytest.fixture(scope="module")
def _us_core():
    with FhirSimulator("us-core") as sim:
        yield sim


@pytest.fixture(scope="module")
def _epic():
    with FhirSimulator("epic") as sim:
        yield sim


@pytest.fixture
def us(_us_core):
    _seed(_us_core)
    return _us_core


@pytest.fixture
def epic(_epic):
    _seed(_epic)
    return _epic


def client_for(sim: FhirSimulator, scope: str | None = None) -> httpx.Client:
    ignored = sim.rules.scope_param == "ignored"
    form = token_form(SIGNER.sign(claims_for(sim)), None if ignored else (scope or " ".join(SCOPES)))
    answer = httpx.post(sim.token_url, data=form)
    assert answer.status_code == 200, answer.text
    return httpx.Client(base_url=sim.base_url, timeout=10,
                        headers={"Authorization": f"Bearer {answer.json()['access_token']}",
                                 "Content-Type": "application/fhir+json",
                                 "Accept": "application/fhir+json"})


def note(text: str = "Assessment: stable.", *, patient: str = "p1", encounter: str | None = "e1",
         ident: str | None = None, **over: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "resourceType": "DocumentReference",
        "identifier": [{"system": NOTE_ID_SYSTEM, "value": ident or uuid.uuid4().hex}],
        "status": "current", "docStatus": "final",
        "type": {"coding": [{"system": "http://loinc.org", "code": "11506-3"}]},
        "category": [{"coding": [{"system": "http://hl7.org/fhir/us/core/CodeSystem/us-core-documentreference-category",
                                  "code": "clinical-note"}]}],
        "subject": {"reference": f"Patient/{patient}"},
        "date": "2024-05-01T10:00:00Z",
        "content": [{"attachment": {"contentType": "text/plain",
                                    "data": base64.b64encode(text.encode()).decode()}}],
    }
    if encounter:
        doc["context"] = {"encounter": [{"reference": f"Encounter/{encounter}"}]}
    doc.update(over)
    return doc


def expressions(answer: httpx.Response) -> list[str]:
    body = answer.json()
    assert body["resourceType"] == "OperationOutcome"
    return [e for i in body["issue"] for e in i.get("expression", [])]


# ------------------------------------------------------------------ discovery and token

def test_metadata_and_smart_configuration_are_public(us):
    # Given a us-core simulator / When discovery is fetched without a token
    cap = httpx.get(us.base_url + "/metadata").json()
    smart = httpx.get(us.base_url + "/.well-known/smart-configuration").json()
    # Then it is an R4 CapabilityStatement and the token endpoint is advertised
    assert cap["fhirVersion"] == "4.0.1"
    docref = next(r for r in cap["rest"][0]["resource"] if r["type"] == "DocumentReference")
    assert docref["conditionalCreate"] is True and docref["versioning"] == "versioned-update"
    assert smart["token_endpoint"] == us.token_url
    assert set(smart["token_endpoint_auth_signing_alg_values_supported"]) == {"RS384", "ES384"}


def test_us_core_token_grants_only_requested_registered_scopes(us):
    # Given a client registered for SCOPES / When it asks for one of them and one it lacks
    form = token_form(SIGNER.sign(claims_for(us)),
                      "system/DocumentReference.c system/Observation.c")
    answer = httpx.post(us.token_url, data=form)
    # Then it gets the intersection only
    assert answer.status_code == 200
    assert answer.json()["scope"] == "system/DocumentReference.c"
    assert answer.json()["token_type"].lower() == "bearer"
    assert us.token_requests == 1


def test_us_core_token_requires_scope_param(us):
    answer = httpx.post(us.token_url, data=token_form(SIGNER.sign(claims_for(us)), scope=None))
    assert answer.status_code == 400 and answer.json()["error"] == "invalid_request"


def test_rs384_assertion_is_accepted(us):
    # Given a client registered with an RSA key
    rsa_signer = Signer("RS384", kid="rsa-1")
    us.register_client(CLIENT, rsa_signer.jwk, SCOPES)
    # When it signs with RS384 / Then a token is issued
    answer = httpx.post(us.token_url, data=token_form(rsa_signer.sign(claims_for(us))))
    assert answer.status_code == 200, answer.text


def test_jti_is_never_accepted_twice(us):
    # Given one assertion already exchanged
    assertion = SIGNER.sign(claims_for(us))
    assert httpx.post(us.token_url, data=token_form(assertion)).status_code == 200
    # When it is replayed / Then it is refused as invalid_client
    replay = httpx.post(us.token_url, data=token_form(assertion))
    assert replay.status_code == 400 and replay.json()["error"] == "invalid_client"
    assert "jti" in replay.json()["error_description"]


@pytest.mark.parametrize("case", ["aud", "exp_far", "exp_past", "sub", "kid", "signature", "alg",
                                  "iss"])
def test_bad_assertions_are_refused(us, case):
    # Given an assertion broken in one way
    other = Signer("ES384", kid="k1")
    claims, header, signer = claims_for(us), None, SIGNER
    if case == "aud":
        claims["aud"] = us.base_url + "/token"
    elif case == "exp_far":
        claims["exp"] = int(time.time()) + 600
    elif case == "exp_past":
        claims["exp"] = int(time.time()) - 5
    elif case == "sub":
        claims["sub"] = "someone-else"
    elif case == "kid":
        header = {"kid": "unknown-kid"}
    elif case == "signature":
        signer = other  # same kid, wrong private key
    elif case == "alg":
        header = {"alg": "RS256"}
    elif case == "iss":
        claims["iss"] = claims["sub"] = "not-registered"
    # When it is presented
    answer = httpx.post(us.token_url, data=token_form(signer.sign(claims, header)))
    # Then the token endpoint refuses with invalid_client and issues nothing
    assert answer.status_code == 400
    assert answer.json()["error"] == "invalid_client"
    assert us.stats()["tokens_live"] == 0


def test_epic_token_ignores_scope_param_and_returns_registered_scopes(epic):
    # When a scope param is sent anyway
    answer = httpx.post(epic.token_url, data=token_form(SIGNER.sign(claims_for(epic)),
                                                        "system/Observation.c"))
    # Then Epic-style: ignored, and the registration's scopes are granted and reported
    assert answer.status_code == 200
    assert answer.json()["scope"].split() == SCOPES
    assert epic.token_log()[-1]["scope_param"] == "system/Observation.c"


def test_fhir_calls_need_a_live_token(us):
    # Given no token / Then 401 with a Bearer challenge
    anon = httpx.get(us.base_url + "/DocumentReference", params={"patient": "p1"})
    assert anon.status_code == 401 and "Bearer" in anon.headers["WWW-Authenticate"]
    # Given a token that the server then expires / Then 401 invalid_token
    with client_for(us) as c:
        assert c.get("/DocumentReference", params={"patient": "p1"}).status_code == 200
        us.expire_tokens()
        expired = c.get("/DocumentReference", params={"patient": "p1"})
    assert expired.status_code == 401 and 'invalid_token' in expired.headers["WWW-Authenticate"]


def test_missing_write_scope_is_403(us):
    with client_for(us, scope="system/DocumentReference.rs") as c:
        answer = c.post("/DocumentReference", json=note())
    assert answer.status_code == 403 and answer.json()["issue"][0]["code"] == "forbidden"
    assert us.documents() == []


# ------------------------------------------------------------------ us-core writes

def test_us_core_create_returns_versioned_location_and_etag(us):
    with client_for(us) as c:
        answer = c.post("/DocumentReference", json=note())
    assert answer.status_code == 201
    rid = answer.json()["id"]
    assert answer.headers["Location"] == f"{us.base_url}/DocumentReference/{rid}/_history/1"
    assert answer.headers["ETag"] == 'W/"1"'
    assert [d["id"] for d in us.documents("p1")] == [rid]


def test_us_core_conditional_create_replay_files_nothing_new(us):
    # Given a note created with If-None-Exist on its deterministic identifier
    doc = note(ident="key-123")
    cond = {"If-None-Exist": f"identifier={NOTE_ID_SYSTEM}|key-123"}
    with client_for(us) as c:
        first = c.post("/DocumentReference", json=doc, headers=cond)
        # When the same write is replayed
        second = c.post("/DocumentReference", json=doc, headers=cond)
        # Then 200 with the existing resource, and still one document
        assert first.status_code == 201 and second.status_code == 200
        assert second.json()["id"] == first.json()["id"]
        assert us.creates() == 1
        # Given two resources share the identifier (written without the condition)
        c.post("/DocumentReference", json=doc)
        # When conditionally created again / Then 412, nothing new
        third = c.post("/DocumentReference", json=doc, headers=cond)
    assert third.status_code == 412
    assert us.creates() == 2


def test_concurrent_conditional_creates_file_exactly_one(us):
    # Given eight racing conditional creates of the same write
    doc = note(ident="race-1")
    cond = {"If-None-Exist": f"identifier={NOTE_ID_SYSTEM}|race-1"}
    statuses: list[int] = []
    with client_for(us) as c:
        def send() -> None:
            statuses.append(c.post("/DocumentReference", json=doc, headers=cond).status_code)
        threads = [threading.Thread(target=send) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=10)
    # Then one 201, the rest 200, one stored document
    assert sorted(statuses) == [200] * 7 + [201]
    assert len(us.documents()) == 1


def test_us_core_update_is_version_aware(us):
    with client_for(us) as c:
        created = c.post("/DocumentReference", json=note()).json()
        rid = created["id"]
        changed = dict(created, status="entered-in-error")
        # When updated without If-Match / Then 400 (R4 http.html#concurrency)
        assert c.put(f"/DocumentReference/{rid}", json=changed).status_code == 400
        # When updated with the current version / Then 200 and W/"2"
        ok = c.put(f"/DocumentReference/{rid}", json=changed, headers={"If-Match": 'W/"1"'})
        assert ok.status_code == 200 and ok.headers["ETag"] == 'W/"2"'
        # When a stale writer updates with W/"1" / Then 412 and the edit survives
        stale = c.put(f"/DocumentReference/{rid}", json=dict(created, status="current"),
                      headers={"If-Match": 'W/"1"'})
        assert stale.status_code == 412
        # And moving the note to another chart is refused
        moved = c.put(f"/DocumentReference/{rid}", headers={"If-Match": 'W/"2"'},
                      json=dict(changed, subject={"reference": "Patient/p2"}, context=None))
        assert moved.status_code == 422
        old = c.get(f"/DocumentReference/{rid}/_history/1")
    assert us.get("DocumentReference", rid)["status"] == "entered-in-error"
    assert old.status_code == 200 and old.json()["status"] == "current"


def test_us_core_transaction_resolves_urn_uuid_and_is_all_or_nothing(us):
    doc_urn = f"urn:uuid:{uuid.uuid4()}"
    provenance = {"resourceType": "Provenance", "target": [{"reference": doc_urn}],
                  "recorded": "2024-05-01T10:00:00Z",
                  "agent": [{"who": {"display": "Chartbridge"}}]}
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": doc_urn, "resource": note(), "request": {"method": "POST", "url": "DocumentReference"}},
        {"resource": provenance, "request": {"method": "POST", "url": "Provenance"}}]}
    with client_for(us) as c:
        # When a transaction carries a Provenance whose target is the note's urn:uuid
        answer = c.post("/", json=bundle)
        # Then both are created and the reference points at the new note
        assert answer.status_code == 200, answer.text
        statuses = [e["response"]["status"] for e in answer.json()["entry"]]
        assert statuses == ["201 Created", "201 Created"]
        rid = us.documents()[0]["id"]
        assert us.resources("Provenance")[0]["target"][0]["reference"] == f"DocumentReference/{rid}"
        # When a later entry is invalid / Then nothing from the bundle is stored
        bad = json.loads(json.dumps(bundle))
        bad["entry"][0]["fullUrl"] = doc_urn = f"urn:uuid:{uuid.uuid4()}"
        bad["entry"][1]["resource"]["target"] = [{"reference": doc_urn}]
        del bad["entry"][1]["resource"]["recorded"]
        failed = c.post("/", json=bad)
    assert failed.status_code == 400
    assert expressions(failed) == ["Bundle.entry[1].resource.recorded"]
    assert us.creates(None) == 2


# ------------------------------------------------------------------ validation

@pytest.mark.parametrize("mutate, status, expression", [
    (lambda d: d.pop("status"), 400, "DocumentReference.status"),
    (lambda d: d.update(status="final"), 400, "DocumentReference.status"),
    (lambda d: d.update(docStatus="signed"), 400, "DocumentReference.docStatus"),
    (lambda d: d.pop("content"), 400, "DocumentReference.content"),
    (lambda d: d["content"][0]["attachment"].update(data="not base64!"), 400,
     "DocumentReference.content[0].attachment.data"),
    (lambda d: d["content"][0]["attachment"].pop("contentType"), 422,
     "DocumentReference.content[0].attachment.contentType"),
    (lambda d: d.update(subject={"reference": "p1"}), 400, "DocumentReference.subject"),
    (lambda d: d.update(subject={"reference": "Patient/nobody"}), 422, "DocumentReference.subject"),
    (lambda d: d.update(context={"encounter": {"reference": "Encounter/e1"}}), 400,
     "DocumentReference.context.encounter"),
    (lambda d: d.update(context={"encounter": [{"reference": "Encounter/e2"}]}), 422,
     "DocumentReference.context.encounter[0]"),
])
def test_us_core_validation_names_the_element(us, mutate, status, expression):
    doc = note()
    mutate(doc)
    with client_for(us) as c:
        answer = c.post("/DocumentReference", json=doc)
    assert answer.status_code == status
    assert expression in expressions(answer)
    assert us.documents() == []


def test_non_json_body_is_400_operation_outcome(us):
    with client_for(us) as c:
        answer = c.post("/DocumentReference", content=b"<DocumentReference/>")
    assert answer.status_code == 400
    assert answer.json()["issue"][0]["code"] == "structure"


# ------------------------------------------------------------------ epic behaviour

def test_epic_replayed_create_files_a_duplicate(epic):
    # Given Epic ignores If-None-Exist
    doc = note(ident="key-9")
    cond = {"If-None-Exist": f"identifier={NOTE_ID_SYSTEM}|key-9"}
    with client_for(epic) as c:
        first = c.post("/DocumentReference", json=doc, headers=cond)
        second = c.post("/DocumentReference", json=doc, headers=cond)
    # Then both are 201 with a relative Location, no body, no ETag -- and two notes exist
    for answer in (first, second):
        assert answer.status_code == 201 and answer.content == b""
        assert answer.headers["Location"].startswith("DocumentReference/")
        assert "ETag" not in answer.headers
    assert first.headers["Location"] != second.headers["Location"]
    assert len(epic.documents("p1")) == 2
    assert all(c["if_none_exist_ignored"] for c in epic.calls("create"))


def test_epic_keeps_only_first_attachment_and_returns_representation_on_request(epic):
    doc = note()
    doc["content"].append({"attachment": {"contentType": "application/pdf", "data": "JVBERg=="}})
    with client_for(epic) as c:
        answer = c.post("/DocumentReference", json=doc, headers={"Prefer": "return=representation"})
    assert answer.status_code == 201
    assert len(answer.json()["content"]) == 1
    assert epic.documents()[0]["content"][0]["attachment"]["contentType"] == "text/plain"


@pytest.mark.parametrize("mutate, status, expression", [
    (lambda d: d.pop("docStatus"), 422, "DocumentReference.docStatus"),
    (lambda d: d["content"][0]["attachment"].update(contentType="text/html"), 422,
     "DocumentReference.content[0].attachment.contentType"),
    (lambda d: d.pop("context"), 422, "DocumentReference.context.encounter"),
    (lambda d: d.update(subject={"reference": "Patient/nobody"}), 404, "DocumentReference.subject"),
    (lambda d: d.update(context={"encounter": [{"reference": "Encounter/nope"}]}), 404,
     "DocumentReference.context.encounter[0]"),
    (lambda d: d.update(context={"encounter": [{"reference": "Encounter/e2"}]}), 422,
     "DocumentReference.context.encounter[0]"),
])
def test_epic_rules(epic, mutate, status, expression):
    doc = note()
    mutate(doc)
    with client_for(epic) as c:
        answer = c.post("/DocumentReference", json=doc)
    assert answer.status_code == status
    assert expression in expressions(answer)
    assert epic.documents() == []


def test_epic_refuses_update_and_transaction(epic):
    with client_for(epic) as c:
        c.post("/DocumentReference", json=note())
        rid = epic.documents()[0]["id"]
        assert c.put(f"/DocumentReference/{rid}", json=epic.documents()[0]).status_code == 405
        assert c.delete(f"/DocumentReference/{rid}").status_code == 405
        assert c.post("/", json={"resourceType": "Bundle", "type": "transaction",
                                 "entry": []}).status_code == 400


# ------------------------------------------------------------------ search

def test_search_by_identifier_patient_encounter_type_and_date(us):
    with client_for(us) as c:
        c.post("/DocumentReference", json=note(ident="a", date="2024-05-01T10:00:00Z"))
        c.post("/DocumentReference", json=note(ident="b", patient="p2", encounter="e2",
                                                date="2024-06-01T10:00:00Z"))

        def ids(**params: str) -> list[str]:
            bundle = c.get("/DocumentReference", params=params).json()
            assert bundle["type"] == "searchset"
            return sorted(e["resource"]["identifier"][0]["value"] for e in bundle["entry"])

        assert ids(identifier=f"{NOTE_ID_SYSTEM}|a") == ["a"]
        assert ids(patient="p2") == ["b"]
        assert ids(subject="Patient/p1") == ["a"]
        assert ids(encounter="Encounter/e2") == ["b"]
        assert ids(type="http://loinc.org|11506-3") == ["a", "b"]
        assert ids(date="ge2024-05-15") == ["b"]
        assert ids(date="2024-05-01") == ["a"]
        assert c.get("/DocumentReference", params={"bogus": "1"}).status_code == 400


# ------------------------------------------------------------------ faults

def test_status_faults_fire_then_clear(us):
    us.faults.add(call="create", status=503, times=2)
    us.faults.add(call="create", status=429, retry_after=3, times=1)
    with client_for(us) as c:
        answers = [c.post("/DocumentReference", json=note()) for _ in range(4)]
    assert [a.status_code for a in answers] == [503, 503, 429, 201]
    assert answers[2].headers["Retry-After"] == "3"
    assert len(us.documents()) == 1


def test_lose_response_stores_the_note_but_answers_502(us):
    us.faults.add(call="create", kind="lose_response")
    with client_for(us) as c:
        answer = c.post("/DocumentReference", json=note(ident="lost-1"))
    assert answer.status_code == 502
    assert [d["identifier"][0]["value"] for d in us.documents()] == ["lost-1"]


def test_lose_response_can_drop_the_connection(us):
    us.faults.add(call="create", kind="lose_response", drop_connection=True)
    with client_for(us) as c, pytest.raises(httpx.TransportError):
        c.post("/DocumentReference", json=note())
    assert len(us.documents()) == 1


def test_not_registered_is_403_with_empty_body(epic):
    epic.faults.add(call="create", kind="not_registered")
    with client_for(epic) as c:
        answer = c.post("/DocumentReference", json=note())
    assert answer.status_code == 403 and answer.content == b""


def test_slow_fault_delays_the_answer(us):
    us.faults.add(call="read", kind="slow", delay_s=0.3)
    with client_for(us) as c:
        started = time.monotonic()
        answer = c.get("/Patient/p1")
        elapsed = time.monotonic() - started
    assert answer.status_code == 200 and elapsed >= 0.3


def test_faults_over_http_and_bad_fault_input_names_the_field(us):
    ok = httpx.post(us.base_url + "/_sim/faults", json={"call": "token", "status": 500})
    assert ok.status_code == 201
    assert httpx.post(us.token_url, data=token_form(SIGNER.sign(claims_for(us)))).status_code == 500
    bad = httpx.post(us.base_url + "/_sim/faults", json={"call": "token", "status": "x"})
    assert bad.status_code == 400 and bad.json()["field"] == "status"
    with pytest.raises(InputError):
        us.faults.add(call="nope", status=500)


def test_token_lifetime_is_configurable_and_enforced():
    # Given a simulator whose clock the test controls and 60 s tokens
    now = [time.time()]
    with FhirSimulator("us-core", token_ttl_s=60, clock=lambda: now[0]) as sim:
        _seed(sim)
        with client_for(sim) as c:
            assert c.get("/Patient/p1").status_code == 200
            # When 61 s pass / Then the token is refused as expired
            now[0] += 61
            answer = c.get("/Patient/p1")
    assert answer.status_code == 401 and answer.json()["issue"][0]["code"] == "expired"


@pytest.mark.parametrize("kind, status, code", [("expired_token", 401, "expired"),
                                                 ("forbidden_scope", 403, "forbidden")])
def test_auth_faults(us, kind, status, code):
    us.faults.add(call="create", kind=kind)
    with client_for(us) as c:
        answer = c.post("/DocumentReference", json=note())
        retry = c.post("/DocumentReference", json=note())
    assert answer.status_code == status and answer.json()["issue"][0]["code"] == code
    assert retry.status_code == 201 and len(us.documents()) == 1


def test_oversized_body_is_413_and_epic_has_no_provenance_create(epic):
    with client_for(epic) as c:
        huge = c.post("/DocumentReference", content=b"{" + b" " * (11 * 1024 * 1024) + b"}")
        prov = c.post("/Provenance", json={"resourceType": "Provenance"})
    assert huge.status_code == 413 and huge.json()["resourceType"] == "OperationOutcome"
    assert prov.status_code == 405


def test_standalone_serve_is_configured_over_http(capsys):
    # Given serve() running in a thread on a free port
    import socket as _socket
    from contract_tests.fhir_docref.simulator import serve
    with _socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    stop = threading.Event()
    thread = threading.Thread(target=serve, kwargs={"port": port, "profile": "epic", "stop": stop})
    thread.start()
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 5
        while True:
            try:
                httpx.get(base + "/metadata")
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "simulator did not come up"
                time.sleep(0.02)
        # When a patient, encounter and client are added through /_sim
        assert httpx.post(base + "/_sim/patients", json={"id": "p9"}).status_code == 201
        assert httpx.post(base + "/_sim/encounters",
                          json={"id": "e9", "patient_id": "p9"}).status_code == 201
        assert httpx.post(base + "/_sim/clients", json={
            "client_id": CLIENT, "jwks": {"keys": [SIGNER.jwk]}, "scopes": SCOPES}).status_code == 201
        claims = {"iss": CLIENT, "sub": CLIENT, "aud": base + "/oauth2/token",
                  "exp": int(time.time()) + 200, "jti": uuid.uuid4().hex}
        token = httpx.post(base + "/oauth2/token", data=token_form(SIGNER.sign(claims), None))
        headers = {"Authorization": "Bearer " + token.json()["access_token"]}
        created = httpx.post(base + "/DocumentReference", headers=headers,
                             json=note(patient="p9", encounter="e9"))
        docs = httpx.get(base + "/_sim/documents", params={"patient": "p9"}).json()["documents"]
        # Then the note is filed and visible through the inspection endpoint
        assert created.status_code == 201 and len(docs) == 1
        assert base in capsys.readouterr().out
        # And a missing field in a control names it
        bad = httpx.post(base + "/_sim/encounters", json={"id": "e10", "patient_id": "zz"})
        assert bad.status_code == 400 and bad.json()["field"] == "patient_id"
    finally:
        stop.set()
        thread.join(timeout=5)
    assert not thread.is_alive()
