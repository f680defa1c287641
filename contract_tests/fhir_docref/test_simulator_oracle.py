"""The oracle-health profile of the simulator enforces what Oracle Health's Millennium R4
documentation says of DocumentReference create/search (sources in README.md, "oracle-health
profile"). Exercised over HTTP with httpx; no adapter code. Each rule has a test that fails
when the rule is removed from simulator/rules.py or validation.py."""
from __future__ import annotations

import base64
import copy
import uuid
from typing import Any, Callable

import httpx
import pytest

from contract_tests.fhir_docref.simulator import FhirSimulator
from contract_tests.fhir_docref.test_simulator import (
    CLIENT,
    NOTE_ID_SYSTEM,
    SIGNER,
    claims_for,
    expressions,
    token_form,
)

# Millennium's system scopes are SMART v1 (read / write); v2 ones are not granted
V1_SCOPES = ["system/DocumentReference.read", "system/DocumentReference.write",
             "system/Binary.read", "system/Patient.read"]
XHTML_TYPE = "application/xhtml+xml;charset=utf-8"
PROPRIETARY = "https://fhir.cerner.com/ec2458f2-1e24-41c8-b71b-0e701af7583d/codeSet/72"


def xhtml(text: str = "Assessment: stable.") -> str:
    page = ('<?xml version="1.0" encoding="UTF-8"?>'
            '<html xmlns="http://www.w3.org/1999/xhtml"><head><title>Note</title></head>'
            f"<body><p>{text}</p></body></html>")
    return base64.b64encode(page.encode()).decode()


@pytest.fixture(scope="module")
def _oracle():
    with FhirSimulator("oracle-health") as sim:
        yield sim


@pytest.fixture
def oracle(_oracle):
    _oracle.reset(keep_seed=False)
    _oracle.register_client(CLIENT, SIGNER.jwk, V1_SCOPES + ["system/DocumentReference.c"])
    _oracle.add_patient("p1")
    _oracle.add_patient("p2")
    _oracle.add_encounter("e1", "p1")
    _oracle.add_encounter("e2", "p1")
    return _oracle


def client_for(sim: FhirSimulator, scope: str | None = " ".join(V1_SCOPES)) -> httpx.Client:
    answer = httpx.post(sim.token_url, data=token_form(SIGNER.sign(claims_for(sim)), scope))
    assert answer.status_code == 200, answer.text
    return httpx.Client(base_url=sim.base_url, timeout=10,
                        headers={"Authorization": f"Bearer {answer.json()['access_token']}",
                                 "Content-Type": "application/fhir+json",
                                 "Accept": "application/fhir+json"})


def note(text: str = "Assessment: stable.", **over: Any) -> dict[str, Any]:
    """A create body shaped as the Millennium R4 create documents it."""
    doc: dict[str, Any] = {
        "resourceType": "DocumentReference",
        "identifier": [{"system": NOTE_ID_SYSTEM, "value": uuid.uuid4().hex}],
        "status": "current", "docStatus": "final",
        "type": {"coding": [{"system": "http://loinc.org", "code": "11506-3"}]},
        "subject": {"reference": "Patient/p1"},
        "author": [{"reference": "Practitioner/prac-1"}],
        "content": [{"attachment": {"contentType": XHTML_TYPE, "data": xhtml(text),
                                    "creation": "2024-05-01T10:00:00Z"}}],
        "context": {"encounter": [{"reference": "Encounter/e1"}],
                    "period": {"end": "2024-05-01T10:00:00Z"}},
    }
    doc.update(over)
    return doc


# ------------------------------------------------------------------ the create answer

def test_create_answers_201_absolute_location_etag_and_no_body(oracle):
    with client_for(oracle) as c:
        answer = c.post("/DocumentReference", json=note())
    assert answer.status_code == 201, answer.text
    # Location absolute and unversioned, a weak ETag, Content-Length 0 (the docs' example)
    rid = answer.headers["Location"].rsplit("/", 1)[1]
    assert answer.headers["Location"] == f"{oracle.base_url}/DocumentReference/{rid}"
    assert answer.headers["ETag"] == 'W/"1"'
    assert answer.content == b""


def test_unsupported_fields_are_dropped_and_the_text_lives_behind_a_binary(oracle):
    with client_for(oracle) as c:
        parent = c.post("/DocumentReference", json=note()).headers["Location"]
        pid = parent.rsplit("/", 1)[1]
        body = note("Second note.", relatesTo=[
            {"code": "replaces", "target": {"reference": f"DocumentReference/{pid}"}}])
        rid = c.post("/DocumentReference", json=body).headers["Location"].rsplit("/", 1)[1]
        read = c.get(f"/DocumentReference/{rid}").json()
    # identifier and relatesTo are not create fields: ignored, so not stored
    assert "identifier" not in read and "relatesTo" not in read
    att = read["content"][0]["attachment"]
    assert "data" not in att and att["url"].startswith(f"{oracle.base_url}/Binary/")
    assert "Second note." in oracle.document_text(read)


def test_if_none_exist_is_ignored_so_a_replay_files_a_second_note(oracle):
    body = note()
    with client_for(oracle) as c:
        headers = {"If-None-Exist": "identifier=" + NOTE_ID_SYSTEM + "|x"}
        first = c.post("/DocumentReference", json=body, headers=headers)
        again = c.post("/DocumentReference", json=body, headers=headers)
    assert first.status_code == again.status_code == 201
    assert len(oracle.documents("p1")) == 2
    assert all(c.get("if_none_exist_ignored") for c in oracle.calls("create"))


def test_no_transaction_and_no_provenance_create(oracle):
    with client_for(oracle) as c:
        bundle = c.post("/", json={"resourceType": "Bundle", "type": "transaction",
                                   "entry": [{"resource": note(), "request": {
                                       "method": "POST", "url": "DocumentReference"}}]})
        prov = c.post("/Provenance", json={"resourceType": "Provenance"})
    assert bundle.status_code == 400 and prov.status_code == 405
    assert oracle.documents() == []


# ------------------------------------------------------------------ the create rules

def _set(path: str, value: Any) -> Callable[[dict], None]:
    def mutate(doc: dict) -> None:
        *head, last = path.split(".")
        node: Any = doc
        for key in head:
            node = node[int(key)] if key.isdigit() else node[key]
        if value is _DROP:
            del node[last]
        else:
            node[int(last) if last.isdigit() else last] = value
    return mutate


_DROP = object()
ATT = "DocumentReference.content[0].attachment"


@pytest.mark.parametrize("mutate, expression", [
    # documents are XHTML only, with the documented contentType and charset
    (_set("content.0.attachment.contentType", "text/plain;charset=utf-8"), f"{ATT}.contentType"),
    (_set("content.0.attachment.contentType", "application/xhtml+xml"), f"{ATT}.contentType"),
    (_set("content.0.attachment.data", base64.b64encode(b"just text").decode()), f"{ATT}.data"),
    (_set("content.0.attachment.data", base64.b64encode(
        b"<html><body><p>no namespace</p></body></html>").decode()), f"{ATT}.data"),
    (_set("content.0.attachment.data", _DROP), f"{ATT}.data"),
    (_set("content.0.attachment.creation", "2024-05-01"), f"{ATT}.creation"),
    # content: only one entry
    (lambda d: d["content"].append(copy.deepcopy(d["content"][0])), "DocumentReference.content"),
    # at most one author, a Practitioner reference
    (_set("author", [{"reference": "Practitioner/a"}, {"reference": "Practitioner/b"}]),
     "DocumentReference.author"),
    (_set("author", [{"identifier": {"value": "npi-1"}}]), "DocumentReference.author[0]"),
    # context required, one encounter, period.end with a time
    (_set("context", _DROP), "DocumentReference.context.encounter"),
    (_set("context.encounter", [{"reference": "Encounter/e1"}, {"reference": "Encounter/e2"}]),
     "DocumentReference.context.encounter"),
    (_set("context.period", _DROP), "DocumentReference.context.period.end"),
    (_set("context.period.end", "2024-05-01"), "DocumentReference.context.period.end"),
    # docStatus final (or amended) only; status current only
    (_set("docStatus", "preliminary"), "DocumentReference.docStatus"),
    (_set("docStatus", _DROP), "DocumentReference.docStatus"),
    (_set("status", "superseded"), "DocumentReference.status"),
    # type: LOINC codings or one proprietary coding, not both
    (_set("type", {"coding": [{"system": "http://loinc.org", "code": "11506-3"},
                              {"system": PROPRIETARY, "code": "20732501"}]}),
     "DocumentReference.type.coding"),
])
def test_create_rules_answer_422_naming_the_element(oracle, mutate, expression):
    body = note()
    mutate(body)
    with client_for(oracle) as c:
        answer = c.post("/DocumentReference", json=body)
    assert answer.status_code == 422, answer.text
    assert answer.json()["resourceType"] == "OperationOutcome"
    assert expression in expressions(answer)
    assert oracle.documents() == []


@pytest.mark.parametrize("over", [
    {"docStatus": "amended"},                                        # system access
    {"type": {"coding": [{"system": PROPRIETARY, "code": "20732501"}]}},   # one proprietary
    {"content": [{"attachment": {"contentType": "text/html;charset=utf-8", "data": xhtml()}}]},
    {"author": None},                                                # optional (system access)
])
def test_what_the_docs_allow_is_accepted(oracle, over):
    body = note(**over)
    if "author" in over:
        del body["author"]
    with client_for(oracle) as c:
        answer = c.post("/DocumentReference", json=body)
    assert answer.status_code == 201, answer.text


# ------------------------------------------------------------------ token and search

def test_token_needs_a_scope_and_grants_smart_v1_scopes_only(oracle):
    missing = httpx.post(oracle.token_url, data=token_form(SIGNER.sign(claims_for(oracle)), None))
    assert missing.status_code == 400 and missing.json()["error"] == "invalid_request"
    v2_only = httpx.post(oracle.token_url, data=token_form(
        SIGNER.sign(claims_for(oracle)), "system/DocumentReference.c"))
    assert v2_only.status_code == 400 and v2_only.json()["error"] == "invalid_scope"
    v1 = httpx.post(oracle.token_url, data=token_form(
        SIGNER.sign(claims_for(oracle)), "system/DocumentReference.write system/DocumentReference.c"))
    assert v1.status_code == 200 and v1.json()["scope"] == "system/DocumentReference.write"


def test_search_takes_the_documented_parameters_only(oracle):
    with client_for(oracle) as c:
        c.post("/DocumentReference", json=note())
        by_identifier = c.get("/DocumentReference", params={"patient": "Patient/p1",
                                                            "identifier": "urn:x|1"})
        no_patient = c.get("/DocumentReference", params={"type": "http://loinc.org|11506-3"})
        one_period = c.get("/DocumentReference", params={"patient": "p1",
                                                         "period": "ge2024-05-01T00:00:00Z"})
        window = c.get("/DocumentReference", params=[
            ("patient", "Patient/p1"), ("encounter", "Encounter/e1"),
            ("type", "http://loinc.org|11506-3"),
            ("period", "ge2024-05-01T09:00:00Z"), ("period", "lt2024-05-01T11:00:00Z")])
        outside = c.get("/DocumentReference", params=[
            ("patient", "Patient/p1"), ("period", "ge2024-05-02T00:00:00Z"),
            ("period", "lt2024-05-03T00:00:00Z")])
    # no identifier search parameter; patient (or _id) required; period needs ge AND lt
    assert by_identifier.status_code == 400 and "identifier" in expressions(by_identifier)
    assert no_patient.status_code == 400
    assert one_period.status_code == 400 and "period" in expressions(one_period)
    assert window.status_code == 200 and window.json()["total"] == 1
    assert outside.status_code == 200 and outside.json()["total"] == 0


def test_update_needs_if_match_and_keeps_the_create_rules(oracle):
    with client_for(oracle) as c:
        loc = c.post("/DocumentReference", json=note()).headers["Location"]
        rid = loc.rsplit("/", 1)[1]
        current = c.get(f"/DocumentReference/{rid}").json()
        current["content"] = [{"attachment": {"contentType": XHTML_TYPE, "data": xhtml("v2")}}]
        no_match = c.put(f"/DocumentReference/{rid}", json=current)
        prelim = c.put(f"/DocumentReference/{rid}", json={**current, "docStatus": "preliminary"},
                       headers={"If-Match": 'W/"1"'})
        ok = c.put(f"/DocumentReference/{rid}", json={**current, "docStatus": "amended"},
                   headers={"If-Match": 'W/"1"'})
    assert no_match.status_code == 400
    assert prelim.status_code == 422 and "DocumentReference.docStatus" in expressions(prelim)
    assert ok.status_code == 200 and ok.headers["ETag"] == 'W/"2"'
