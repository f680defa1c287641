"""The capture API over HTTP (waitress, the in-process worker, the three simulators), on
SQLite and PostgreSQL: one visit from session creation to a FHIR DocumentReference, an
athenaOne document and an MDM T02, with repeated and concurrent requests leaving one
artifact each; idempotency; auth; bad input."""
from __future__ import annotations

import io
import uuid
from concurrent.futures import ThreadPoolExecutor

import httpx

from tests.api.site import CLIENT, ORG, OTHER, READER, session_body, wav

CLINICIAN = "X-Clinician-Token"


def _parallel(n, fn):
    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(lambda _: fn(), range(n)))


def _visit(site, c, external_id="VISIT-1", chunks=3):
    r = c.post("/sessions", session_body(external_id))
    assert r.status_code == 201, r.text
    sid = r.json()["id"]
    for seq in range(1, chunks + 1):
        r = c.put_chunk(sid, 1, seq, wav(1.0, 300 + 50 * seq))
        assert r.status_code == 200, r.text
    r = c.post(f"/sessions/{sid}/recordings/1", {"status": "Stopped", "chunk_count": chunks})
    assert r.status_code == 202, r.text
    c.wait(f"/sessions/{sid}", lambda b: b["drafts"], timeout=60, what="the draft")
    return sid


def _settled(body):
    return len(body["writes"]) == 3 and all(
        w["status"] not in ("pending", "in_flight") for w in body["writes"])


def test_visit_to_every_target_once_with_repeats_and_concurrency(site):
    c = site.client()
    # the same session opened 8 times at once (different keys): one session
    bodies = _parallel(8, lambda: c.post("/sessions", session_body("VISIT-1")))
    assert {b.status_code for b in bodies} <= {200, 201}
    assert len({b.json()["id"] for b in bodies}) == 1
    sid = bodies[0].json()["id"]
    assert bodies[0].json()["patient_ids"][2] == {"value": "1", "type": "athena-patient",
                                                  "system": None}      # types kept
    # each chunk uploaded 6 times at once: the same answer each time
    for seq in (1, 2, 3):
        audio = wav(1.0, 300 + 50 * seq)
        answers = _parallel(6, lambda: c.put_chunk(sid, 1, seq, audio))
        assert {a.status_code for a in answers} == {200}
        assert len({a.text for a in answers}) == 1
    other = c.put_chunk(sid, 1, 2, wav(1.0, 1234))
    assert other.status_code == 409 and other.json()["field"] == "seq"
    stops = _parallel(4, lambda: c.post(f"/sessions/{sid}/recordings/1",
                                        {"status": "Stopped", "chunk_count": 3}))
    assert {s.status_code for s in stops} == {202}
    c.wait(f"/sessions/{sid}", lambda b: b["drafts"], timeout=60, what="the draft")
    draft = c.get(f"/sessions/{sid}/drafts/1").json()
    section = draft["sections"][0]
    assert section["segments"] and {"id", "start_ms", "end_ms"} <= set(section["segments"][0])
    assert draft["provenance"]["transcriber"] == "fake"
    # a wrong content hash is refused and changes nothing
    wrong = c.post(f"/sessions/{sid}/drafts/1/approval",
                   {"decision": "approved", "content_hash": "0" * 64},
                   **{CLINICIAN: site.clinician_token()})
    assert wrong.status_code == 409 and wrong.json()["field"] == "content_hash"
    assert site.engine.store.approval(ORG, draft["id"]) is None
    # approved 8 times at once, by the clinician: one write per target
    token = site.clinician_token("clin-42", "Dr Okafor")
    answers = _parallel(8, lambda: c.post(
        f"/sessions/{sid}/drafts/1/approval",
        {"decision": "approved", "content_hash": draft["content_hash"]}, **{CLINICIAN: token}))
    assert {a.status_code for a in answers} == {200}, [a.text for a in answers]
    assert len({tuple(a.json()["writes"]) for a in answers}) == 1
    writes = c.wait(f"/sessions/{sid}/writes", _settled, timeout=60, what="the writes")
    by_target = {w["target"]: w for w in writes["writes"]}
    assert {t: w["status"] for t, w in by_target.items()} == {
        "fhir_docref": "written", "athenaone": "written", "hl7_mdm": "written"}
    assert all(w["external_id"] for w in by_target.values())
    # one artifact at each simulator
    assert len(site.sims["fhir_docref"].documents()) == 1
    assert len(site.sims["athenaone"].documents()) == 1
    t02 = [m for m in site.sims["hl7_mdm"].messages() if "T02" in str(m)]
    assert len(t02) == 1
    assert by_target["fhir_docref"]["external_id"].endswith(
        site.sims["fhir_docref"].documents()[0]["id"])
    # the approver recorded is the person, never the client
    approval = site.engine.store.approval(ORG, draft["id"])
    assert approval.approver.value == "clin-42" and approval.approver_name == "Dr Okafor"
    assert approval.approver.system == site.idp.issuer
    assert CLIENT not in approval.approver.value
    # the session shows the same writes
    assert {w["target"] for w in c.get(f"/sessions/{sid}").json()["writes"]} == set(by_target)


def test_edit_makes_a_new_version_and_the_old_hash_no_longer_approves(site):
    c = site.client()
    sid = _visit(site, c)
    v1 = c.get(f"/sessions/{sid}/drafts/1").json()
    r = c.post(f"/sessions/{sid}/drafts/1/edits", {"section": "10164-2", "text": "Edited."})
    assert r.status_code == 201 and r.json()["version"] == 2, r.text
    v2 = r.json()
    assert v2["content_hash"] != v1["content_hash"]
    stale = c.post(f"/sessions/{sid}/drafts/2/approval",
                   {"decision": "approved", "content_hash": v1["content_hash"]},
                   **{CLINICIAN: site.clinician_token()})
    assert stale.status_code == 409 and stale.json()["field"] == "content_hash"
    ok = c.post(f"/sessions/{sid}/drafts/2/approval",
                {"decision": "approved", "content_hash": v2["content_hash"]},
                **{CLINICIAN: site.clinician_token()})
    assert ok.status_code == 200, ok.text
    writes = c.wait(f"/sessions/{sid}/writes", _settled, timeout=60, what="the writes")
    assert {w["draft_version"] for w in writes["writes"]} == {2}


def test_idempotency_key_semantics(site):
    c = site.client()
    key = uuid.uuid4().hex
    first = c.post("/sessions", session_body("IDEM-1"), key=key)
    again = c.post("/sessions", session_body("IDEM-1"), key=key)
    assert first.status_code == again.status_code == 201
    assert again.json() == first.json() and again.headers["Idempotent-Replayed"] == "true"
    other = c.post("/sessions", session_body("IDEM-2"), key=key)
    assert other.status_code == 422 and other.json()["field"] == "Idempotency-Key"
    missing = c.http.post(c.api + "/sessions", json=session_body("IDEM-3"), headers=c.headers())
    assert missing.status_code == 400 and missing.json()["field"] == "Idempotency-Key"
    # a request still being answered under the key: 409
    import json

    from chartbridge.api.auth import Principal
    from chartbridge.api.idempotency import _store, caller, fingerprint
    raw = json.dumps(session_body("IDEM-4")).encode()
    me = Principal(org=ORG, scopes=frozenset(), client_id=CLIENT, person=None,
                   person_name=None, via="client")
    _store(site.engine).begin(ORG, "held-key", fingerprint(
        "POST", f"/orgs/{ORG}/api/v1/sessions", caller(me), raw))

    def held(body: bytes):
        return c.http.post(c.api + "/sessions", content=body, headers=c.headers(**{
            "Idempotency-Key": "held-key", "Content-Type": "application/json"}))
    same = held(raw)
    assert same.status_code == 409 and same.json()["error"] == "idempotency_key_in_flight"
    # another body under a key still in flight is a reused key (422), not "in flight"
    other_body = held(json.dumps(session_body("IDEM-4b")).encode())
    assert other_body.status_code == 422 and other_body.json()["field"] == "Idempotency-Key"
    # keys are per org: the other org's same key is a different request
    o = site.client(OTHER)
    assert o.post("/sessions", session_body("IDEM-1"), key=key).status_code == 201
    # 10 at once under one key: one session, every answer its stored response or 409
    key = uuid.uuid4().hex
    answers = _parallel(10, lambda: c.post("/sessions", session_body("IDEM-5"), key=key))
    assert {a.status_code for a in answers} <= {201, 409}
    done = [a for a in answers if a.status_code == 201]
    assert done and len({a.json()["id"] for a in done}) == 1
    sessions = [s for s in site.engine.store.list_sessions(ORG) if s.external_id == "IDEM-5"]
    assert len(sessions) == 1


def test_auth_failures_are_json_401_and_403(site):
    c = site.client()
    api = c.api
    no_token = httpx.get(api + "/sessions/abc")
    assert no_token.status_code == 401 and no_token.json()["error"] == "unauthorized"
    garbage = httpx.get(api + "/sessions/abc", headers={"Authorization": "Bearer nope"})
    assert garbage.status_code == 401 and garbage.json()["field"] == "Authorization"
    reader = site.client(ORG, READER)
    denied = reader.post("/sessions", session_body("AUTH-1"))
    assert denied.status_code == 403 and denied.json()["scope"] == "capture"
    # a client may not ask for more than it was given
    assert reader.get("/sessions/abc").status_code == 404
    too_much = site.client(ORG, READER, scopes="read capture")
    try:
        too_much.token()
        raise AssertionError("a token with a scope the client was not given")
    except httpx.HTTPStatusError as exc:
        assert exc.response.status_code == 400
        assert exc.response.json()["error"] == "invalid_scope"
    # another org's token is not this org's
    other = site.client(OTHER)
    stolen = httpx.get(api + "/sessions/abc", headers={"Authorization": f"Bearer {other.token()}"})
    assert stolen.status_code == 401
    # the token endpoint: a key that is not the client's, a replayed assertion
    from chartbridge.api.client import client_assertion, new_client_key
    form = {"grant_type": "client_credentials",
            "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"}
    wrong_key = httpx.post(api + "/token", data={**form, "client_assertion": client_assertion(
        new_client_key()[0], CLIENT, api + "/token")})
    assert wrong_key.status_code == 401 and wrong_key.json()["error"] == "invalid_client"
    assertion = client_assertion(site.keys[(ORG, CLIENT)], CLIENT, api + "/token")
    assert httpx.post(api + "/token", data={**form, "client_assertion": assertion}).status_code == 200
    replay = httpx.post(api + "/token", data={**form, "client_assertion": assertion})
    assert replay.status_code == 401
    other_aud = client_assertion(site.keys[(ORG, CLIENT)], CLIENT, other.api + "/token")
    assert httpx.post(api + "/token", data={**form, "client_assertion": other_aud}).status_code == 401
    # approval: the client alone is not a clinician; a forged clinician token is refused
    sid = _visit(site, c, "AUTH-VISIT", chunks=1)
    h = c.get(f"/sessions/{sid}/drafts/1").json()["content_hash"]
    body = {"decision": "approved", "content_hash": h}
    alone = c.post(f"/sessions/{sid}/drafts/1/approval", body)
    assert alone.status_code == 401 and alone.json()["field"] == CLINICIAN
    from chartbridge.demo_idp import DemoIdP
    forger = DemoIdP()
    forger.issuer = site.idp.issuer                       # same issuer, another key
    forged = c.post(f"/sessions/{sid}/drafts/1/approval", body,
                    **{CLINICIAN: forger.id_token("clin-42", "Dr Okafor", "physician")})
    assert forged.status_code == 401
    expired = c.post(f"/sessions/{sid}/drafts/1/approval", body,
                     **{CLINICIAN: site.clinician_token(ttl_s=-120)})
    assert expired.status_code == 401
    wrong_aud = c.post(f"/sessions/{sid}/drafts/1/approval", body,
                       **{CLINICIAN: site.clinician_token(audience="someone-else")})
    assert wrong_aud.status_code == 401
    assert site.engine.store.drafts(ORG, session_id=sid)[0][1] == "draft"    # nothing decided


def test_bad_input_names_the_field_and_audio_that_is_not_audio_is_422(site):
    c = site.client()
    body = session_body("BAD-1")
    body["patient_ids"] = []
    r = c.post("/sessions", body)
    assert r.status_code == 422 and r.json()["field"] == "patient_ids"
    body = session_body("BAD-1")
    del body["encounter_ids"][0]["type"]
    r = c.post("/sessions", body)
    assert r.status_code == 422 and r.json()["field"] == "encounter_ids.0.type"
    r = c.http.post(c.api + "/sessions", content=b"{nope", headers=c.headers(**{
        "Idempotency-Key": "k1", "Content-Type": "application/json"}))
    assert 400 <= r.status_code < 500 and r.json()["field"]
    sid = c.post("/sessions", session_body("BAD-2")).json()["id"]
    good = c.put_chunk(sid, 1, 1, wav(1.0))
    assert good.status_code == 200
    for junk in (b"hello, not audio", b"RIFF\x00\x00\x00\x00WAVEjunk", b""):
        r = c.put_chunk(sid, 1, 2, junk)
        assert r.status_code == 422 and r.json()["error"] == "not_audio", r.text
        assert r.json()["field"] == "body"
    chunks = c.get(f"/sessions/{sid}").json()["chunks"]
    assert [ch["sequence"] for ch in chunks] == [1]                 # nothing else stored
    assert site.engine.store.get_audio(ORG, sid, "R1", 1) is not None  # nothing lost
    assert c.put_chunk(sid, 1, 1, wav(1.0)).status_code == 200       # still the same answer
    r = c.post(f"/sessions/{sid}/recordings/1", {"status": "Playing", "chunk_count": 1})
    assert r.status_code == 422 and r.json()["field"] == "status"
    assert c.get("/sessions/does-not-exist").status_code == 404


def test_browser_webm_opus_chunks_decode_each_on_their_own(site):
    c = site.client()
    sid = c.post("/sessions", session_body("WEBM-1")).json()["id"]
    for seq in (1, 2):
        r = c.put_chunk(sid, 1, seq, webm_opus(1.0), "audio/webm;codecs=opus")
        assert r.status_code == 200, r.text
        assert r.json()["source_format"] == "webm" and 900 <= r.json()["duration_ms"] <= 1100
    again = c.put_chunk(sid, 1, 1, webm_opus(1.0), "audio/webm;codecs=opus")
    assert again.status_code == 200
    r = c.post(f"/sessions/{sid}/recordings/1", {"status": "Stopped", "chunk_count": 2})
    assert r.status_code == 202
    c.wait(f"/sessions/{sid}", lambda b: b["drafts"], timeout=60, what="the draft")


def webm_opus(seconds: float) -> bytes:
    """What MediaRecorder gives: WebM with one Opus stream, decodable on its own."""
    import av
    import numpy as np

    buf = io.BytesIO()
    with av.open(buf, "w", format="webm") as out:
        stream = out.add_stream("libopus", rate=48000)
        stream.layout = "mono"
        t = np.arange(int(48000 * seconds)) / 48000
        pcm = (np.sin(2 * np.pi * 440 * t) * 8000).astype("<i2").reshape(1, -1)
        frame = av.AudioFrame.from_ndarray(pcm, format="s16", layout="mono")
        frame.sample_rate = 48000
        for p in stream.encode(frame):
            out.mux(p)
        for p in stream.encode(None):
            out.mux(p)
    return buf.getvalue()


def test_a_registered_page_authenticator_approves_as_its_signed_in_person(site):
    """The recorder page's interface: an authenticator after the bearer token's, whose
    Principal names the person; the approval records that person, with no client token."""
    from chartbridge.api import auth
    from chartbridge.core.models import Identifier

    c = site.client()
    sid = _visit(site, c, "PAGE-1", chunks=1)
    h = c.get(f"/sessions/{sid}/drafts/1").json()["content_hash"]

    def page(request, org):
        if request.headers.get("X-Test-Page") != "yes":
            return None
        return auth.Principal(org=org, scopes=frozenset({"read", "approve"}), client_id=None,
                              person=Identifier(value="page-dr", type="USER", system="idp"),
                              person_name="Dr Page", via="page")
    auth.register_authenticator(page)
    try:
        assert auth.AUTHENTICATORS[0].__name__ == "bearer_authenticator"
        r = httpx.post(f"{c.api}/sessions/{sid}/drafts/1/approval",
                       json={"decision": "approved", "content_hash": h},
                       headers={"X-Test-Page": "yes", "Idempotency-Key": "page-approve"})
        assert r.status_code == 200, r.text
        assert r.json()["approver"]["id"]["value"] == "page-dr"
        denied = httpx.post(f"{c.api}/sessions", json=session_body("PAGE-2"),
                            headers={"X-Test-Page": "yes", "Idempotency-Key": "page-open"})
        assert denied.status_code == 403                      # the page has no capture scope
    finally:
        auth.AUTHENTICATORS.remove(page)
    approval = site.engine.store.approval(ORG, site.engine.store.drafts(ORG, session_id=sid)[0][0].id)
    assert approval.approver.value == "page-dr"
