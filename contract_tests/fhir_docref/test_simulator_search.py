"""The FHIR simulator's reference search and conditional create on `_tag`, as the FHIR R4
search page defines them (search.html#reference: `[id]`, `[type]/[id]`, `[url]`, the
`:[type]` modifier; "Parameters for all resources": `_tag`, a token on Resource.meta.tag)
and http.html#ccreate (0/1/>1 matches -> 201/200/412) -- plus the strict mode of servers that
only match a typed reference. Exercised over HTTP with httpx; no adapter code."""
from __future__ import annotations

import uuid

import pytest

from contract_tests.fhir_docref.simulator import FhirSimulator
from contract_tests.fhir_docref.test_simulator import (  # noqa: F401  (fixtures)
    NOTE_ID_SYSTEM,
    _seed,
    _us_core,
    client_for,
    note,
    us,
)

TAG_SYSTEM = "urn:chartbridge:write"


def _ids(c, **params: str) -> list[str]:
    answer = c.get("/DocumentReference", params=params)
    assert answer.status_code == 200, answer.text
    bundle = answer.json()
    assert bundle["type"] == "searchset"
    return sorted(e["resource"]["identifier"][0]["value"] for e in bundle["entry"])


def test_reference_search_accepts_each_form_the_spec_defines(us):
    with client_for(us) as c:
        c.post("/DocumentReference", json=note(ident="a"))
        c.post("/DocumentReference", json=note(ident="b", patient="p2", encounter="e2"))
        # [id], [type]/[id], [url] on this server, and the :[type] modifier are one reference
        for value in ("p1", "Patient/p1", f"{us.base_url}/Patient/p1"):
            assert _ids(c, patient=value) == ["a"], value
            assert _ids(c, subject=value) == ["a"], value
        assert _ids(c, **{"patient:Patient": "p1"}) == ["a"]
        assert _ids(c, **{"subject:Patient": "p2"}) == ["b"]
        for value in ("e2", "Encounter/e2", f"{us.base_url}/Encounter/e2"):
            assert _ids(c, encounter=value) == ["b"], value
        # a comma is OR, each value in any form
        assert _ids(c, patient="Patient/p2,p1") == ["a", "b"]
        # another type, another server's URL, an unknown id: no match
        assert _ids(c, patient="Encounter/e1") == []
        assert _ids(c, patient="https://elsewhere.example/fhir/Patient/p1") == []
        assert _ids(c, patient="p9") == []
        # a modifier naming a type the parameter cannot point to, or another modifier: 400
        for name in ("patient:Encounter", "patient:identifier", "encounter:missing"):
            assert c.get("/DocumentReference", params={name: "x"}).status_code == 400, name


def test_strict_server_matches_only_typed_references():
    with FhirSimulator("us-core", strict_references=True) as sim:
        _seed(sim)
        with client_for(sim) as c:
            c.post("/DocumentReference", json=note(ident="a"))
            # Then a bare id finds nothing, a typed reference (or its URL) finds the note
            assert _ids(c, patient="p1") == [] and _ids(c, encounter="e1") == []
            assert _ids(c, patient="Patient/p1") == ["a"]
            assert _ids(c, encounter="Encounter/e1") == ["a"]
            assert _ids(c, patient=f"{sim.base_url}/Patient/p1") == ["a"]
            assert _ids(c, **{"patient:Patient": "p1"}) == ["a"]


def _provenance(target: str, key: str) -> dict:
    return {"resourceType": "Provenance", "meta": {"tag": [{"system": TAG_SYSTEM, "code": key}]},
            "target": [{"reference": target}], "recorded": "2024-05-01T10:00:00Z",
            "agent": [{"who": {"display": "a system"}}]}


def test_conditional_create_on_tag_works_for_any_resource(us):
    key = f"org:fhir:{uuid.uuid4().hex}"
    cond = {"If-None-Exist": f"_tag={TAG_SYSTEM}|{key}"}
    with client_for(us) as c:
        doc = c.post("/DocumentReference", json=note(ident="t1")).json()
        target = f"DocumentReference/{doc['id']}"
        # Given a Provenance created on the condition of its tag
        first = c.post("/Provenance", json=_provenance(target, key), headers=cond)
        # When the same create is replayed
        second = c.post("/Provenance", json=_provenance(target, key), headers=cond)
        # Then the replay matched the existing one: 200, same id, one Provenance
        assert (first.status_code, second.status_code) == (201, 200)
        assert second.json()["id"] == first.json()["id"]
        assert len(us.resources("Provenance")) == 1
        # and _tag is an ordinary search parameter, on the tag's system and code
        c.post("/DocumentReference", json=note(ident="tagged", meta={
            "tag": [{"system": TAG_SYSTEM, "code": key}]}))
        assert _ids(c, _tag=f"{TAG_SYSTEM}|{key}") == ["tagged"]
        assert _ids(c, _tag=key) == ["tagged"]
        assert _ids(c, _tag=f"urn:other|{key}") == [] and _ids(c, _tag=f"{TAG_SYSTEM}|x") == []
        # And inside a transaction: ifNoneExist on _tag, replayed, files one of each
        bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
            {"fullUrl": "urn:uuid:" + str(uuid.uuid4()), "resource": note(ident="t2"),
             "request": {"method": "POST", "url": "DocumentReference",
                         "ifNoneExist": f"identifier={NOTE_ID_SYSTEM}|t2"}}]}
        bundle["entry"].append({
            "fullUrl": "urn:uuid:" + str(uuid.uuid4()),
            "resource": _provenance(bundle["entry"][0]["fullUrl"], key + "-2"),
            "request": {"method": "POST", "url": "Provenance",
                        "ifNoneExist": f"_tag={TAG_SYSTEM}|{key}-2"}})
        answers = [c.post("/", json=bundle).json() for _ in range(2)]
    assert [e["response"]["status"] for e in answers[0]["entry"]] == ["201 Created"] * 2
    assert [e["response"]["status"] for e in answers[1]["entry"]] == ["200 OK"] * 2
    assert len(us.resources("Provenance")) == 2 and len(us.documents("p1")) == 3


def test_stale_search_fault_answers_an_empty_searchset_once(us):
    with client_for(us) as c:
        c.post("/DocumentReference", json=note(ident="s1"))
        us.faults.add(call="search", kind="stale_search")
        assert _ids(c, patient="Patient/p1") == []
        assert _ids(c, patient="Patient/p1") == ["s1"]
    with pytest.raises(Exception, match="call=search"):
        us.faults.add(call="create", kind="stale_search")
