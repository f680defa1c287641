"""The independent peers (peers/README.md) are real servers the project did not write: the
FHIR R4 peer (Medplum's FhirRouter from npm behind peers/fhir/server.mjs) and the MLLP
peer (Medplum's HL7 v2 connection and ACK builder behind peers/mllp/server.mjs).

Spoken to with plain httpx, joserfc and python-hl7 only, never through the project's
adapters, so a test here fails for the peer's behaviour and not for ours."""
from __future__ import annotations

import asyncio
import concurrent.futures
import json
import os
import shutil
import time
import uuid
from pathlib import Path

import httpx
import hl7
import pytest
from hl7.mllp import open_hl7_connection
from joserfc import jwt
from joserfc.jwk import ECKey, RSAKey

from contract_tests.support.peers import (PEERS_DIR, PeerError, install, start_fhir_peer,
                                         start_mllp_peer)

if shutil.which("node") is None and not os.environ.get("CI"):
    # CI has node (the peers are part of its run): there a missing node fails loudly
    pytest.skip("the peers need node (>= 20.19)", allow_module_level=True)

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
SYSTEM = "urn:chartbridge:peer-test"
FHIR_JSON = "application/fhir+json"


# ------------------------------------------------------------------------------ FHIR peer
@pytest.fixture(scope="module")
def key():
    return RSAKey.generate_key(2048, parameters={"kid": "peer-test-rs"})


@pytest.fixture(scope="module")
def fhir(key):
    with start_fhir_peer(jwks={"keys": [key.as_dict(private=False)]},
                         client_id="peer-test-client") as peer:
        yield peer


@pytest.fixture(scope="module")
def http():
    with httpx.Client(timeout=10) as client:
        yield client


def assertion(fhir, key, *, alg="RS384", **claims) -> str:
    now = int(time.time())
    body = {"iss": fhir.client_id, "sub": fhir.client_id, "aud": fhir.token_url,
            "exp": now + 240, "jti": uuid.uuid4().hex, **claims}
    return jwt.encode({"alg": alg, "kid": key.kid, "typ": "JWT"}, body, key, algorithms=[alg])


def token_request(http, fhir, signed: str, scope="system/DocumentReference.read "
                  "system/DocumentReference.write"):
    return http.post(fhir.token_url, data={
        "grant_type": "client_credentials", "client_assertion_type": ASSERTION_TYPE,
        "client_assertion": signed, "scope": scope})


@pytest.fixture(scope="module")
def auth(http, fhir, key):
    resp = token_request(http, fhir, assertion(fhir, key))
    assert resp.status_code == 200, resp.text
    return {"Authorization": f"Bearer {resp.json()['access_token']}",
            "Accept": FHIR_JSON, "Content-Type": FHIR_JSON}


def docref(fhir, value: str, doc_status="preliminary") -> dict:
    return {"resourceType": "DocumentReference", "status": "current", "docStatus": doc_status,
            "identifier": [{"system": SYSTEM, "value": value}],
            "type": {"coding": [{"system": "http://loinc.org", "code": "11506-3"}]},
            "category": [{"coding": [{"system": "http://hl7.org/fhir/us/core/CodeSystem/"
                                                "us-core-documentreference-category",
                                      "code": "clinical-note"}]}],
            "subject": {"reference": f"Patient/{fhir.patient_id}"},
            "context": {"encounter": [{"reference": f"Encounter/{fhir.encounter_id}"}]},
            "content": [{"attachment": {"contentType": "text/plain", "data": "aGVsbG8="}}]}


def test_fhir_peer_is_medplums_router_at_the_pinned_version():
    install("fhir")                     # a fresh clone has no node_modules until the first start
    pinned = json.loads((PEERS_DIR / "fhir" / "package.json").read_text())["dependencies"]
    for pkg in ("@medplum/fhir-router", "@medplum/core"):
        installed = json.loads((PEERS_DIR / "fhir" / "node_modules" / pkg / "package.json")
                               .read_text())["version"]
        assert installed == pinned[pkg]


def test_smart_configuration_names_the_token_endpoint(http, fhir):
    conf = http.get(fhir.base_url + "/.well-known/smart-configuration").json()
    assert conf["token_endpoint"] == fhir.token_url
    assert "private_key_jwt" in conf["token_endpoint_auth_methods_supported"]
    assert "client_credentials" in conf["grant_types_supported"]


def test_fhir_calls_need_a_token_it_issued(http, fhir, key, auth):
    url = f"{fhir.base_url}/Patient/{fhir.patient_id}"
    bare = http.get(url, headers={"Accept": FHIR_JSON})
    assert bare.status_code == 401 and bare.headers["WWW-Authenticate"].startswith("Bearer")
    assert bare.json()["resourceType"] == "OperationOutcome"
    assert http.get(url, headers={**auth, "Authorization": "Bearer forged"}).status_code == 401
    # granted only DocumentReference scopes: Patient is refused, DocumentReference is not
    assert http.get(url, headers=auth).status_code == 403
    assert http.get(fhir.base_url + "/DocumentReference", headers=auth).status_code == 200


def test_token_endpoint_checks_the_assertion(http, fhir, key):
    other = RSAKey.generate_key(2048, parameters={"kid": key.kid})    # same kid, wrong key
    assert token_request(http, fhir, assertion(fhir, other)).json()["error"] == "invalid_client"
    assert token_request(http, fhir, assertion(fhir, key, aud="http://elsewhere/token")
                         ).status_code == 401
    assert token_request(http, fhir, assertion(fhir, key, exp=int(time.time()) + 3600)
                         ).status_code == 401
    ec = ECKey.generate_key("P-384", parameters={"kid": key.kid})
    assert token_request(http, fhir, assertion(fhir, ec, alg="ES384")).status_code == 401
    signed = assertion(fhir, key)
    assert token_request(http, fhir, signed).status_code == 200
    replay = token_request(http, fhir, signed)
    assert replay.status_code == 401 and "jti" in replay.json()["error_description"]
    assert token_request(http, fhir, assertion(fhir, key), scope="").status_code == 400
    granted = token_request(http, fhir, assertion(fhir, key), scope="system/Observation.read")
    assert granted.json()["error"] == "invalid_scope"


def test_the_helpers_own_es384_key_gets_a_token(http):
    with start_fhir_peer(algorithm="ES384") as peer:
        own = ECKey.import_key(peer.private_key_pem, parameters={"kid": peer.key_id})
        resp = token_request(http, peer, assertion(peer, own, alg="ES384"))
        assert resp.status_code == 200, resp.text
        assert peer.live_env("K")["K"] == peer.private_key_pem
        assert peer.live_env("K")["CHARTBRIDGE_FHIR_KEY_REF"] == "env:K"


def test_create_read_and_search_by_identifier(http, fhir, auth):
    value = uuid.uuid4().hex
    created = http.post(fhir.base_url + "/DocumentReference", json=docref(fhir, value),
                        headers=auth)
    assert created.status_code == 201
    assert created.headers["Content-Type"].startswith(FHIR_JSON)
    doc = created.json()
    vid = doc["meta"]["versionId"]
    assert created.headers["ETag"] == f'W/"{vid}"'
    assert created.headers["Location"] == (
        f"{fhir.base_url}/DocumentReference/{doc['id']}/_history/{vid}")
    read = http.get(f"{fhir.base_url}/DocumentReference/{doc['id']}", headers=auth)
    assert read.status_code == 200 and read.json() == doc
    vread = http.get(created.headers["Location"], headers=auth)
    assert vread.status_code == 200 and vread.json()["identifier"][0]["value"] == value
    found = http.get(fhir.base_url + "/DocumentReference",
                     params={"identifier": f"{SYSTEM}|{value}"}, headers=auth).json()
    assert found["resourceType"] == "Bundle" and found["type"] == "searchset"
    assert [e["resource"]["id"] for e in found["entry"]] == [doc["id"]]
    none = http.get(fhir.base_url + "/DocumentReference",
                    params={"identifier": f"{SYSTEM}|not-{value}"}, headers=auth).json()
    assert not none.get("entry")


def test_conditional_create_returns_the_existing_document(http, fhir, auth):
    value = uuid.uuid4().hex
    cond = {**auth, "If-None-Exist": f"identifier={SYSTEM}|{value}"}
    first = http.post(fhir.base_url + "/DocumentReference", json=docref(fhir, value),
                      headers=cond)
    again = http.post(fhir.base_url + "/DocumentReference", json=docref(fhir, value),
                      headers=cond)
    assert (first.status_code, again.status_code) == (201, 200)
    assert again.json()["id"] == first.json()["id"]
    found = http.get(fhir.base_url + "/DocumentReference",
                     params={"identifier": f"{SYSTEM}|{value}"}, headers=auth).json()
    assert len(found["entry"]) == 1


def test_update_with_a_stale_if_match_is_412(http, fhir, auth):
    created = http.post(fhir.base_url + "/DocumentReference",
                        json=docref(fhir, uuid.uuid4().hex), headers=auth)
    doc, etag = created.json(), created.headers["ETag"]
    url = f"{fhir.base_url}/DocumentReference/{doc['id']}"
    final = {**doc, "docStatus": "final"}
    updated = http.put(url, json=final, headers={**auth, "If-Match": etag})
    assert updated.status_code == 200 and updated.headers["ETag"] != etag
    stale = http.put(url, json=final, headers={**auth, "If-Match": etag})
    assert stale.status_code == 412
    assert stale.json()["resourceType"] == "OperationOutcome"
    history = http.get(url + "/_history", headers=auth).json()
    assert len(history["entry"]) == 2


def test_an_invalid_document_is_refused_with_an_operation_outcome(http, fhir, auth):
    bad = {k: v for k, v in docref(fhir, uuid.uuid4().hex).items() if k != "content"}
    resp = http.post(fhir.base_url + "/DocumentReference", json=bad, headers=auth)
    assert resp.status_code == 400
    issue = resp.json()["issue"][0]
    assert issue["severity"] == "error" and issue["expression"] == ["DocumentReference.content"]


def test_a_transaction_is_all_or_nothing(http, fhir, key):
    token = token_request(http, fhir, assertion(fhir, key), scope="system/DocumentReference.* "
                          "system/Provenance.*").json()["access_token"]
    headers = {"Authorization": f"Bearer {token}", "Content-Type": FHIR_JSON}
    value, full_url = uuid.uuid4().hex, f"urn:uuid:{uuid.uuid4()}"
    provenance = {"resourceType": "Provenance", "target": [{"reference": full_url}],
                  "recorded": "2026-12-01T12:00:00Z", "agent": [{"who": {"display": "peer"}}]}
    entries = [{"fullUrl": full_url, "resource": docref(fhir, value),
                "request": {"method": "POST", "url": "DocumentReference",
                            "ifNoneExist": f"identifier={SYSTEM}|{value}"}},
               {"resource": provenance, "request": {"method": "POST", "url": "Provenance"}}]
    only_docs = token_request(http, fhir, assertion(fhir, key)).json()["access_token"]
    unscoped = http.post(fhir.base_url, json={"resourceType": "Bundle", "type": "transaction",
                                              "entry": entries},
                         headers={**headers, "Authorization": f"Bearer {only_docs}"})
    assert unscoped.status_code == 403                     # the Provenance entry's scope
    broken = {**provenance, "agent": []}                   # Provenance.agent is 1..*
    refused = http.post(fhir.base_url, headers=headers, json={
        "resourceType": "Bundle", "type": "transaction", "entry": [entries[0], {
            "resource": broken, "request": {"method": "POST", "url": "Provenance"}}]})
    assert refused.status_code == 400
    search = {"identifier": f"{SYSTEM}|{value}"}
    assert not http.get(fhir.base_url + "/DocumentReference", params=search,
                        headers=headers).json().get("entry")         # the first entry undone
    done = http.post(fhir.base_url, headers=headers,
                     json={"resourceType": "Bundle", "type": "transaction", "entry": entries})
    assert done.status_code == 200 and done.json()["type"] == "transaction-response"
    doc_entry, prov_entry = done.json()["entry"]
    assert doc_entry["response"]["status"].startswith("201")
    assert prov_entry["resource"]["target"] == [{"reference": doc_entry["response"]["location"]}]


def test_metadata_is_a_public_capability_statement_naming_the_token_endpoint(http, fhir):
    cap = http.get(fhir.base_url + "/metadata", headers={"Accept": FHIR_JSON})
    assert cap.status_code == 200 and cap.json()["resourceType"] == "CapabilityStatement"
    assert cap.json()["fhirVersion"] == "4.0.1"
    oauth = cap.json()["rest"][0]["security"]["extension"][0]["extension"]
    assert {"url": "token", "valueUri": fhir.token_url} in oauth


# ------------------------------------------------------------------------------ MLLP peer
@pytest.fixture(scope="module")
def mllp():
    with start_mllp_peer(rules=[{"control_id": "^REJECT-", "ack": "AR"}]) as peer:
        yield peer


def mdm_t02(control_id: str) -> str:
    return "\r".join([
        f"MSH|^~\\&|CHARTBRIDGE|CLINIC|EHR|HOSP|20261201120000||MDM^T02^MDM_T02|{control_id}"
        "|P|2.5.1",
        "EVN|T02|20261201120000",
        "PID|1||MRN-0001^^^CLINIC^MR||Peer^Test",
        "PV1|1|O|||||||||||||||||CSN-1",
        "TXA|1|PN|TX|20261201120000||||||||DOC-1|||||AU||AV",
        "OBX|1|TX|11506-3^Progress note^LN||Cough for three days.||||||F",
    ]) + "\r"


def run_async(coro):
    """asyncio.run in a thread of its own: in the whole suite an earlier test (Playwright's
    sync API) may leave an event loop running on this thread."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


# a deadline, not a pause: a node process just started on a loaded CI machine can take
# seconds over its first message
ACK_DEADLINE_S = 30


async def exchange(peer, control_ids: list[str]) -> list[hl7.Message]:
    """One connection, kept open, stop-and-wait: send, read the ACK, send the next."""
    reader, writer = await open_hl7_connection(peer.host, peer.port)
    acks = []
    try:
        for cid in control_ids:
            writer.writemessage(hl7.parse(mdm_t02(cid)))
            await writer.drain()
            acks.append(await asyncio.wait_for(reader.readmessage(), timeout=ACK_DEADLINE_S))
    finally:
        writer.close()
        await writer.wait_closed()
    return acks


def test_mdm_t02_is_acked_aa_with_our_control_id(mllp):
    ids = [f"CB-{uuid.uuid4().hex[:12]}" for _ in range(3)]
    acks = run_async(exchange(mllp, ids))
    for cid, ack in zip(ids, acks):
        assert str(ack.segment("MSH")[9]).startswith("ACK")
        assert str(ack.segment("MSA")[1]) == "AA"
        assert str(ack.segment("MSA")[2]) == cid
        # the ACK comes back addressed to us: its sender is our receiver
        assert str(ack.segment("MSH")[3]) == "EHR" and str(ack.segment("MSH")[5]) == "CHARTBRIDGE"
    assert [m["control_id"] for m in mllp.messages()][-3:] == ids


def test_a_rule_answers_ar(mllp):
    ack, = run_async(exchange(mllp, ["REJECT-1"]))
    assert (str(ack.segment("MSA")[1]), str(ack.segment("MSA")[2])) == ("AR", "REJECT-1")


def test_enhanced_mode_commits_then_accepts():
    async def both(peer):
        reader, writer = await open_hl7_connection(peer.host, peer.port)
        try:
            writer.writemessage(hl7.parse(mdm_t02("ENH-1")))
            await writer.drain()
            return [await asyncio.wait_for(reader.readmessage(), timeout=ACK_DEADLINE_S) for _ in range(2)]
        finally:
            writer.close()
            await writer.wait_closed()

    with start_mllp_peer(enhanced=True) as peer:
        commit, accept = run_async(both(peer))
    assert [str(m.segment("MSA")[1]) for m in (commit, accept)] == ["CA", "AA"]
    assert {str(m.segment("MSA")[2]) for m in (commit, accept)} == {"ENH-1"}


def test_a_peer_that_cannot_start_says_why_and_one_that_ran_is_gone_after():
    with pytest.raises(PeerError, match="did not start.*Patient/bad.*"):
        with start_fhir_peer(resources=[{"resourceType": "Patient", "id": "bad",
                                         "gender": "sometimes", "bogus": 1}]):
            pass
    with start_mllp_peer() as peer:
        pid = peer.pid
        os.kill(pid, 0)                                     # running inside the block
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)                                     # its process group was killed


def test_peers_install_is_quick_when_installed():
    import subprocess
    started = time.monotonic()
    subprocess.run(["bash", str(Path(PEERS_DIR) / "install")], check=True, capture_output=True)
    assert time.monotonic() - started < 5
