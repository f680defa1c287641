"""The Epic Haiku simulator enforces /work/shared/vendors/epic-haiku-ambient.md.

These tests drive the simulator directly with httpx and a tiny stand-in engine (below) that
verifies Epic's JWTs the way the page says; they prove the simulator's rules, not the adapter's.
"""
from __future__ import annotations

import io
import threading
import time
import uuid
import wave
from typing import Any

import httpx
import pytest
from flask import Flask, Response, request
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet, RSAKey

from contract_tests.epic_haiku import CALLBACK_PATH, EpicSimulator, synth_wav
from contract_tests.epic_haiku.simulator import ASSERTION_TYPE
from contract_tests.support.http import BackgroundServer

CLIENT_ID = "chartbridge-backend"
EPIC_ISS = "epic-site-client-1"
ORG = "clinic-a"


# --------------------------------------------------------------------------- stand-in engine

class StubEngine:
    """Receives Epic events, verifies each bearer JWT per the page (JWKS, iss, aud, exp <= 5 min, jti once)."""

    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []
        self.claims: list[dict[str, Any]] = []
        self.jwks: dict[str, Any] | None = None
        self.seen_jti: set[str] = set()
        self.lock = threading.Lock()
        app = Flask("stub_engine")

        @app.post("/orgs/<org>/epic/ambient/<event>")
        def receive(org: str, event: str) -> Response:
            if not self.verify(request.headers.get("Authorization", ""), request.url):
                return Response('{"Error":"Unauthorized"}', 401, content_type="application/json")
            with self.lock:
                self.events.append((event, request.get_json()))
            return Response('{"Status":"Accepted"}', 200, content_type="application/json")

        self.server = BackgroundServer(app, name="stub-engine")
        self.url = self.server.start()

    def verify(self, auth: str, url: str) -> bool:
        scheme, _, token = auth.partition(" ")
        if scheme != "Bearer" or not token:
            return False
        try:
            claims = jwt.decode(token, KeySet.import_key_set(self.jwks), algorithms=["RS384", "ES384"]).claims
        except (JoseError, ValueError):
            return False
        now = time.time()
        ok = (claims.get("iss") == EPIC_ISS and claims.get("aud") == url
              and isinstance(claims.get("exp"), int) and now < claims["exp"] <= now + 300
              and isinstance(claims.get("jti"), str))
        with self.lock:
            if not ok or claims["jti"] in self.seen_jti:
                return False
            self.seen_jti.add(claims["jti"])
            self.claims.append(claims)
        return True

    def names(self) -> list[str]:
        with self.lock:
            return [e for e, _ in self.events]

    def stop(self) -> None:
        self.server.stop()


@pytest.fixture(scope="module")
def client_key() -> RSAKey:
    key = RSAKey.generate_key(2048, private=True)
    key.ensure_kid()
    return key


@pytest.fixture(scope="module")
def epic_key() -> RSAKey:
    return RSAKey.generate_key(2048, private=True)


@pytest.fixture
def engine():
    eng = StubEngine()
    yield eng
    eng.stop()


@pytest.fixture
def sim(engine: StubEngine, client_key: RSAKey, epic_key: RSAKey):
    s = EpicSimulator(engine_url=engine.url, epic_client_id=EPIC_ISS, epic_key=epic_key,
                      clients={CLIENT_ID: {"keys": [client_key.as_dict(private=False)]}})
    s.start()
    engine.jwks = httpx.get(s.jwks_url).json()
    yield s
    s.stop()


def assertion(sim: EpicSimulator, key: RSAKey, **over: Any) -> str:
    now = int(time.time())
    claims = {"iss": CLIENT_ID, "sub": CLIENT_ID, "aud": sim.token_url, "exp": now + 240,
              "jti": str(uuid.uuid4())}
    claims.update(over)
    claims = {k: v for k, v in claims.items() if v is not None}
    return jwt.encode({"alg": "RS384", "kid": key.kid}, claims, key, algorithms=["RS384"])


def token_request(sim: EpicSimulator, signed: str, **form: str) -> httpx.Response:
    data = {"grant_type": "client_credentials", "client_assertion_type": ASSERTION_TYPE,
            "client_assertion": signed, "scope": "system/*.read"}
    data.update(form)
    return httpx.post(sim.token_url, data={k: v for k, v in data.items() if v})


def bearer(sim: EpicSimulator, key: RSAKey) -> dict[str, str]:
    resp = token_request(sim, assertion(sim, key))
    assert resp.status_code == 200, resp.text
    return {"Authorization": f"Bearer {resp.json()['access_token']}"}


def call(sim: EpicSimulator, name: str, body: Any, headers: dict[str, str]) -> httpx.Response:
    return httpx.post(sim.callback_url + name, json=body, headers=headers)


def doc_body(sid: str, version: int, sections: list[str], text: str = "Stable.") -> dict[str, Any]:
    return {"SessionID": sid, "RecordingVersion": version, "GeneratedInstant": "2026-11-21T15:01:00-06:00",
            "Sections": [{"SectionID": s, "ContentType": "text/plain", "Text": text} for s in sections]}


# --------------------------------------------------------------------------- inbound deliveries

def test_begin_session_delivers_the_page_body_with_a_fresh_signed_token(sim: EpicSimulator,
                                                                         engine: StubEngine) -> None:
    # Given a simulator wired to an engine
    # When Epic begins a session, then retries that delivery
    first = sim.begin_session(ORG, session_id="AMB-2026-000123")
    again = sim.redeliver(first)

    # Then the engine got the page's body exactly, CallbackURL pointing at the simulator
    assert first.status == 200 and again.status == 200
    event, body = engine.events[0]
    assert event == "AmbientSessionBegin"
    assert body == {
        "SessionID": "AMB-2026-000123",
        "UserID": {"ID": "E1001", "Type": "EXTERNAL"},
        "PatientIDs": [{"ID": "Z4481", "Type": "MRN"}, {"ID": "eJzlzKe3KPzAV5TtkxmNivQ3", "Type": "FHIR"}],
        "EncounterIDs": [{"ID": "300012345", "Type": "CSN"}, {"ID": "eoK8nLRcEypNjtns4dgnF3Q3", "Type": "FHIR"}],
        "CallbackURL": sim.base_url + CALLBACK_PATH,
        "CareContext": {"DepartmentID": "10501", "Specialty": "Family Medicine", "VisitType": "Office Visit"},
        "NoteType": {"Code": "11506-3", "System": "LOINC", "Name": "Progress note"},
        "AllowedNoteSections": ["10164-2", "10187-3", "29545-1", "51847-2"],
    }
    # And every delivery (retry included) carried its own verified token: aud = URL called, short exp
    assert first.jti != again.jti
    assert all(c["aud"] == f"{engine.url}/orgs/{ORG}/epic/ambient/AmbientSessionBegin" for c in engine.claims)
    assert all(c["exp"] - c["iat"] <= 300 for c in engine.claims)
    assert "kid" in httpx.get(sim.jwks_url).json()["keys"][0]


@pytest.mark.parametrize("mode", ["expired", "wrong_aud", "wrong_key", "wrong_iss", "too_long", "missing",
                                  "alg_none"])
def test_bad_token_helpers_make_tokens_a_spec_verifier_refuses(sim: EpicSimulator, mode: str) -> None:
    # Given a session  When Epic delivers an event with a deliberately bad token
    sim.begin_session(ORG, session_id="S-bad")
    d = sim.deliver(ORG, "AmbientSessionComplete", {"SessionID": "S-bad", "Reason": "Signed"}, token=mode)
    # Then the page's verifier refuses it
    assert d.status == 401


def test_replay_resends_the_same_token_and_is_refused(sim: EpicSimulator) -> None:
    # Given an accepted delivery  When the same token is presented again
    first = sim.begin_session(ORG, session_id="S-replay")
    replayed = sim.replay(first)
    # Then the second presentation is a replay
    assert first.status == 200 and replayed.token == first.token and replayed.status == 401


def test_es384_option_signs_with_an_ec_key(engine: StubEngine) -> None:
    # Given a simulator configured for ES384
    with EpicSimulator(engine_url=engine.url, epic_client_id=EPIC_ISS, epic_alg="ES384") as s:
        engine.jwks = httpx.get(s.jwks_url).json()
        # When it delivers  Then the published EC key verifies the token
        assert engine.jwks["keys"][0]["kty"] == "EC"
        assert s.begin_session(ORG, session_id="S-ec").status == 200


# --------------------------------------------------------------------------- recordings and chunks

def test_record_cuts_wav_chunks_and_versions_announce_only_new_chunks(sim: EpicSimulator, engine: StubEngine,
                                                                       client_key: RSAKey) -> None:
    # Given a session
    sim.begin_session(ORG, session_id="S-rec")
    # When 25 s are recorded in 10 s chunks (paused), then 12 s more (stopped)
    v1 = sim.record("S-rec", synth_wav(25), chunk_seconds=10, status="Paused")
    v2 = sim.record("S-rec", synth_wav(12), chunk_seconds=10, status="Stopped")

    # Then version 1 announces chunks 1-3, version 2 only chunks 4-5, counts are cumulative
    assert (v1.version, v1.new_sequences, v1.chunk_count) == (1, [1, 2, 3], 3)
    assert (v2.version, v2.new_sequences, v2.chunk_count) == (2, [4, 5], 5)
    events = [(e, b.get("RecordingVersion"), b.get("ChunkSequence") or b.get("ChunkCount"), b.get("Status"))
              for e, b in engine.events[1:]]
    assert events == [("RecordingChunkAvailable", 1, 1, None), ("RecordingChunkAvailable", 1, 2, None),
                      ("RecordingChunkAvailable", 1, 3, None), ("RecordingAvailable", 1, 3, "Paused"),
                      ("RecordingChunkAvailable", 2, 4, None), ("RecordingChunkAvailable", 2, 5, None),
                      ("RecordingAvailable", 2, 5, "Stopped")]
    assert engine.events[3][1]["DurationMs"] == 5000 and engine.events[3][1]["ContentType"] == "audio/wav"

    # And a chunk downloads as a valid 16 kHz mono WAV, the same bytes whichever version asks
    h = bearer(sim, client_key)
    ask = {"SessionID": "S-rec", "RecordingID": "R1", "RecordingVersion": 2, "ChunkSequence": 1}
    resp = call(sim, "GetAmbientRecordingChunk", ask, h)
    assert resp.status_code == 200 and resp.headers["content-type"] == "audio/wav"
    with wave.open(io.BytesIO(resp.content)) as w:
        assert (w.getframerate(), w.getnchannels(), w.getnframes()) == (16000, 1, 160000)
    assert call(sim, "GetAmbientRecordingChunk", {**ask, "RecordingVersion": 1}, h).content == resp.content
    # And chunks that do not exist yet, or are not in the asked version, are 404
    assert call(sim, "GetAmbientRecordingChunk", {**ask, "ChunkSequence": 6}, h).status_code == 404
    assert call(sim, "GetAmbientRecordingChunk", {**ask, "RecordingVersion": 1, "ChunkSequence": 4},
                h).status_code == 404
    assert call(sim, "GetAmbientRecordingChunk", {**ask, "ChunkSequence": 0}, h).json()["Field"] == "ChunkSequence"


def test_delivery_options_duplicate_reorder_and_subset(sim: EpicSimulator, engine: StubEngine) -> None:
    # Given three sessions
    for sid in ("S-dup", "S-ord", "S-sub"):
        sim.begin_session(ORG, session_id=sid)
    # When one is recorded with duplicates, one reordered, one with a subset
    dup = sim.record("S-dup", synth_wav(3), chunk_seconds=2, duplicate=True)
    sim.record("S-ord", synth_wav(3), chunk_seconds=2, reorder=True)
    sub = sim.record("S-sub", synth_wav(5), chunk_seconds=2, announce_chunks=[1, 3], announce_available=False)

    # Then every duplicated event arrived twice, each with its own token
    assert [d.event for d in dup.deliveries] == ["RecordingChunkAvailable"] * 4 + ["RecordingAvailable"] * 2
    assert len({d.jti for d in dup.deliveries}) == 6 and all(d.status == 200 for d in dup.deliveries)
    # And RecordingAvailable overtook the last chunk announcement
    ordered = [(e, b.get("ChunkSequence")) for e, b in engine.events if b["SessionID"] == "S-ord"]
    assert ordered[1:] == [("RecordingChunkAvailable", 1), ("RecordingAvailable", None),
                           ("RecordingChunkAvailable", 2)]
    # And only the chosen subset was announced; the rest can follow later
    assert [d.body.get("ChunkSequence") for d in sub.deliveries] == [1, 3]
    assert sim.session_state("S-sub")["newest_announced_version"] == 0
    sim.announce_chunk("S-sub", 2)
    sim.announce_recording("S-sub")
    assert sim.session_state("S-sub")["newest_announced_version"] == 1


# --------------------------------------------------------------------------- token endpoint

def test_token_endpoint_enforces_smart_backend_services(sim: EpicSimulator, client_key: RSAKey) -> None:
    # Given a registered client  When it asks correctly  Then it gets a 5-minute bearer token
    signed = assertion(sim, client_key)
    ok = token_request(sim, signed)
    assert ok.status_code == 200
    assert ok.json()["token_type"] == "Bearer" and ok.json()["expires_in"] == 300
    # When the same assertion (same jti) comes again  Then it is refused (RFC 6749 5.2 JSON)
    replay = token_request(sim, signed)
    assert replay.status_code == 400 and replay.json()["error"] == "invalid_client"
    # And every other deviation is refused with an OAuth error
    other = RSAKey.generate_key(2048, private=True)
    other_signed = jwt.encode({"alg": "RS384", "kid": client_key.kid},
                              {"iss": CLIENT_ID, "sub": CLIENT_ID, "aud": sim.token_url,
                               "exp": int(time.time()) + 60, "jti": "x1"}, other, algorithms=["RS384"])
    cases = {
        "wrong aud": (token_request(sim, assertion(sim, client_key, aud=sim.base_url)), "invalid_client"),
        "exp too far": (token_request(sim, assertion(sim, client_key, exp=int(time.time()) + 3600)),
                        "invalid_client"),
        "expired": (token_request(sim, assertion(sim, client_key, exp=int(time.time()) - 60)), "invalid_client"),
        "no exp": (token_request(sim, assertion(sim, client_key, exp=None)), "invalid_client"),
        "no jti": (token_request(sim, assertion(sim, client_key, jti=None)), "invalid_client"),
        "sub differs": (token_request(sim, assertion(sim, client_key, sub="someone")), "invalid_client"),
        "unknown client": (token_request(sim, assertion(sim, client_key, iss="x", sub="x")), "invalid_client"),
        "wrong key": (token_request(sim, other_signed), "invalid_client"),
        "wrong grant": (token_request(sim, assertion(sim, client_key), grant_type="password"),
                        "unsupported_grant_type"),
        "no assertion type": (token_request(sim, assertion(sim, client_key), client_assertion_type=""),
                              "invalid_request"),
    }
    for name, (resp, code) in cases.items():
        assert (name, resp.status_code, resp.json()["error"]) == (name, 400, code)
    assert sim.token_requests == 2 + len(cases)


def test_outbound_calls_need_a_live_token(sim: EpicSimulator, client_key: RSAKey) -> None:
    # Given a session with a recording and a valid token
    sim.begin_session(ORG, session_id="S-tok")
    sim.record("S-tok", synth_wav(1), chunk_seconds=1)
    ask = {"SessionID": "S-tok", "RecordingID": "R1", "RecordingVersion": 1, "ChunkSequence": 1}
    h = bearer(sim, client_key)
    assert call(sim, "GetAmbientRecordingChunk", ask, h).status_code == 200
    # When there is no token, a made-up one, or all tokens are expired  Then 401
    assert call(sim, "GetAmbientRecordingChunk", ask, {}).status_code == 401
    assert call(sim, "GetAmbientRecordingChunk", ask, {"Authorization": "Bearer made-up"}).status_code == 401
    sim.expire_tokens()
    expired = call(sim, "GetAmbientRecordingChunk", ask, h)
    assert expired.status_code == 401 and "invalid_token" in expired.headers["www-authenticate"]
    # And a fresh token works again
    assert call(sim, "GetAmbientRecordingChunk", ask, bearer(sim, client_key)).status_code == 200


def test_tokens_expire_after_their_lifetime(engine: StubEngine, client_key: RSAKey) -> None:
    # Given a simulator whose clock the test controls
    now = [time.time()]
    with EpicSimulator(engine_url=engine.url, epic_client_id=EPIC_ISS, clock=lambda: now[0],
                       clients={CLIENT_ID: client_key.as_pem(private=False)}) as s:
        s.begin_session(ORG, session_id="S-clock", deliver=False)
        h = bearer(s, client_key)
        body = {"SessionID": "S-clock", "RecordingVersion": 1}
        assert call(s, "AmbientRecordingsProcessed", body, h).status_code == 409  # authorised, never announced
        # When 301 s pass  Then the token is refused
        now[0] += 301
        assert call(s, "AmbientRecordingsProcessed", body, h).status_code == 401


# --------------------------------------------------------------------------- DocumentationReady rules

def test_documentation_ready_enforces_every_rule(sim: EpicSimulator, client_key: RSAKey) -> None:
    # Given a session recorded twice (version 2 newest) and a clinician edit of 51847-2
    sim.begin_session(ORG, session_id="S-doc")
    sim.record("S-doc", synth_wav(2), chunk_seconds=1, status="Paused")
    sim.record("S-doc", synth_wav(1), chunk_seconds=1, status="Stopped")
    sim.edit_sections("S-doc", ["51847-2"])
    h = bearer(sim, client_key)

    # When documentation is sent for version 1  Then 409 stale
    assert call(sim, "DocumentationReady", doc_body("S-doc", 1, ["10164-2"]), h).status_code == 409
    # When a section outside the allowed set or an edited one is sent  Then 422 naming it
    r = call(sim, "DocumentationReady", doc_body("S-doc", 2, ["10164-2", "18776-5"]), h)
    assert r.status_code == 422 and r.json()["SectionIDs"] == ["18776-5"] and "18776-5" in r.json()["Detail"]
    r = call(sim, "DocumentationReady", doc_body("S-doc", 2, ["10164-2", "51847-2"]), h)
    assert r.status_code == 422 and r.json()["Edited"] == ["51847-2"]
    # When the body is malformed  Then 400 naming the field
    bad = doc_body("S-doc", 2, ["10164-2"])
    del bad["GeneratedInstant"]
    assert call(sim, "DocumentationReady", bad, h).json()["Field"] == "GeneratedInstant"
    bad = doc_body("S-doc", 2, ["10164-2"])
    bad["Sections"][0].pop("SectionID")
    r = call(sim, "DocumentationReady", bad, h)
    assert r.status_code == 400 and r.json()["Field"] == "Sections[0].SectionID"
    r = httpx.post(sim.callback_url + "DocumentationReady", content=b"{not json", headers=h)
    assert r.status_code == 400 and r.json()["Field"] == "body"
    assert sim.documentation("S-doc") == []

    # When a valid body is sent twice  Then it is accepted both times but kept once
    good = doc_body("S-doc", 2, ["10164-2", "29545-1"])
    assert call(sim, "DocumentationReady", good, h).json() == {"Accepted": True}
    assert call(sim, "DocumentationReady", good, h).json() == {"Accepted": True}
    assert sim.documentation("S-doc") == [good]
    assert sim.wait_documentation("S-doc", 2, timeout=1) == good
    # When a different body comes for the accepted version  Then 409
    assert call(sim, "DocumentationReady", doc_body("S-doc", 2, ["10164-2"], "Other."), h).status_code == 409
    # And every chunk of versions up to the documented one is gone
    for seq, version in ((1, 2), (3, 2)):
        ask = {"SessionID": "S-doc", "RecordingID": "R1", "RecordingVersion": version, "ChunkSequence": seq}
        assert call(sim, "GetAmbientRecordingChunk", ask, h).status_code == 410
    # And unknown sessions are 404
    assert call(sim, "DocumentationReady", doc_body("nope", 1, ["10164-2"]), h).status_code == 404


def test_recordings_processed_refuses_an_older_version(sim: EpicSimulator, client_key: RSAKey) -> None:
    # Given versions 1 and 2 announced and version 2 reported processed
    sim.begin_session(ORG, session_id="S-proc")
    sim.record("S-proc", synth_wav(1), chunk_seconds=1, status="Paused")
    sim.record("S-proc", synth_wav(1), chunk_seconds=1, status="Paused")
    h = bearer(sim, client_key)
    assert call(sim, "AmbientRecordingsProcessed", {"SessionID": "S-proc", "RecordingVersion": 2}, h).status_code == 200
    # When version 1 is reported after it  Then 409; reporting 2 again is fine
    assert call(sim, "AmbientRecordingsProcessed", {"SessionID": "S-proc", "RecordingVersion": 1}, h).status_code == 409
    assert call(sim, "AmbientRecordingsProcessed", {"SessionID": "S-proc", "RecordingVersion": 2}, h).status_code == 200
    assert sim.session_state("S-proc")["processed_reports"] == [2, 2]


# --------------------------------------------------------------------------- faults and inspection

def test_faults_are_injected_per_call_and_logged(sim: EpicSimulator, client_key: RSAKey) -> None:
    # Given a session ready for documentation
    sim.begin_session(ORG, session_id="S-fault")
    sim.record("S-fault", synth_wav(1), chunk_seconds=1)
    h = bearer(sim, client_key)
    body = doc_body("S-fault", 1, ["10164-2"])
    # When DocumentationReady meets 503 twice (Retry-After 1), then 429, then a 403
    sim.faults.add(call="DocumentationReady", status=503, times=2, retry_after=1)
    sim.faults.add(call="DocumentationReady", status=429, retry_after=2)
    sim.faults.add(call="DocumentationReady", status=403)
    answers = [call(sim, "DocumentationReady", body, h) for _ in range(5)]
    # Then the engine sees them in order, with Retry-After, and nothing was stored until the 200
    assert [a.status_code for a in answers] == [503, 503, 429, 403, 200]
    assert answers[0].headers["retry-after"] == "1" and answers[2].headers["retry-after"] == "2"
    assert sim.call_log("DocumentationReady") == [("DocumentationReady", s) for s in (503, 503, 429, 403, 200)]
    assert sim.call_count("DocumentationReady") == 5 and len(sim.documentation("S-fault")) == 1


def test_an_any_call_fault_hits_outbound_calls_but_not_the_token_endpoint(
        sim: EpicSimulator, client_key: RSAKey) -> None:
    # Given a session ready for documentation and a fault for "*" (any outbound call), twice
    sim.begin_session(ORG, session_id="S-any")
    sim.record("S-any", synth_wav(1), chunk_seconds=1)
    sim.faults.add(call="*", status=503, times=2)
    # When a token is fetched  Then the fault leaves the token endpoint alone
    h = bearer(sim, client_key)
    assert sim.faults.pending()[0]["times"] == 2 and sim.faults.pending()[0]["fired"] == 0
    # When two outbound calls follow  Then each meets it once, and the spent fault is gone
    processed = {"SessionID": "S-any", "RecordingVersion": 1}
    assert call(sim, "AmbientRecordingsProcessed", processed, h).status_code == 503
    assert sim.faults.pending()[0]["times"] == 1 and sim.faults.pending()[0]["fired"] == 1
    assert call(sim, "DocumentationReady", doc_body("S-any", 1, ["10164-2"]), h).status_code == 503
    assert sim.faults.pending() == []
    assert call(sim, "AmbientRecordingsProcessed", processed, h).status_code == 200


def test_fault_after_processing_and_slow_answer(sim: EpicSimulator, client_key: RSAKey) -> None:
    # Given a session ready for documentation
    sim.begin_session(ORG, session_id="S-lost")
    sim.record("S-lost", synth_wav(1), chunk_seconds=1)
    h = bearer(sim, client_key)
    body = doc_body("S-lost", 1, ["10164-2"])
    # When Epic stores the note but the answer is lost (502 after processing)
    sim.faults.add(call="DocumentationReady", status=502, after_processing=True)
    assert call(sim, "DocumentationReady", body, h).status_code == 502
    # Then it was stored anyway, and the retry of the same body is accepted without a second copy
    assert call(sim, "DocumentationReady", body, h).json() == {"Accepted": True}
    assert len(sim.documentation("S-lost")) == 1
    # When a call is slowed  Then the answer takes at least that long
    sim.faults.add(call="AmbientRecordingsProcessed", delay_s=0.3)
    t0 = time.monotonic()
    assert call(sim, "AmbientRecordingsProcessed", {"SessionID": "S-lost", "RecordingVersion": 1}, h).status_code == 200
    assert time.monotonic() - t0 >= 0.3


def test_wait_documentation_wakes_on_acceptance_and_times_out(sim: EpicSimulator, client_key: RSAKey) -> None:
    # Given a session ready for documentation
    sim.begin_session(ORG, session_id="S-wait")
    sim.record("S-wait", synth_wav(1), chunk_seconds=1)
    h = bearer(sim, client_key)
    # When another thread posts documentation  Then the waiter gets it
    t = threading.Thread(target=call, args=(sim, "DocumentationReady", doc_body("S-wait", 1, ["10164-2"]), h))
    t.start()
    assert sim.wait_documentation("S-wait", 1, timeout=5)["RecordingVersion"] == 1
    t.join(5)
    # And waiting for something that never comes ends with TimeoutError
    with pytest.raises(TimeoutError):
        sim.wait_documentation("S-wait", 2, timeout=0.05)


def test_sim_http_controls_drive_a_session(sim: EpicSimulator, engine: StubEngine) -> None:
    # Given only the simulator's HTTP controls
    base = sim.base_url + "/_sim"
    # When a session is begun, audio played, a section edited and the session completed
    r = httpx.post(base + "/sessions", json={"org": ORG, "session_id": "S-http"})
    assert r.status_code == 200 and r.json()["delivery"]["status"] == 200
    r = httpx.post(base + "/sessions/S-http/record", json={"synth_seconds": 3, "chunk_seconds": 2,
                                                           "status": "Stopped"})
    assert r.json()["chunk_count"] == 2 and [d["status"] for d in r.json()["deliveries"]] == [200, 200, 200]
    assert httpx.post(base + "/sessions/S-http/edit", json={"sections": ["51847-2"]}).status_code == 200
    assert httpx.post(base + "/sessions/S-http/complete", json={"reason": "Signed"}).status_code == 200
    # Then the engine saw every event and the state is inspectable
    assert engine.names() == ["AmbientSessionBegin", "RecordingChunkAvailable", "RecordingChunkAvailable",
                              "RecordingAvailable", "DocumentationUpdated", "AmbientSessionComplete"]
    state = httpx.get(base + "/sessions/S-http").json()
    assert state["closed"] == "Signed" and state["edited_sections"] == ["51847-2"]
    assert "deliveries" in httpx.get(base + "/state").json()
    # And bad control input is a 400 naming the field, never a 500
    r = httpx.post(base + "/faults", json={"call": "Nope", "status": 503})
    assert r.status_code == 400 and r.json()["Field"] == "call"
    r = httpx.post(base + "/sessions/S-http/record", json={"synth_seconds": 1, "status": "Maybe"})
    assert r.status_code == 400 and r.json()["Field"] == "status"
    assert httpx.get(base + "/sessions/unknown").status_code == 404
    assert httpx.post(base + "/faults", json={"call": "token", "status": 503}).status_code == 200
    assert httpx.post(base + "/reset").status_code == 200 and sim.faults.pending() == []


def test_absent_allowed_sections_fall_back_to_the_default_set_and_closed_sessions_refuse(
        sim: EpicSimulator, engine: StubEngine, client_key: RSAKey) -> None:
    # Given a session begun without AllowedNoteSections (the org default applies)
    sim.default_allowed_sections = ("10164-2",)
    sim.begin_session(ORG, session_id="S-default", allowed_sections=None, care_context=None)
    assert "AllowedNoteSections" not in engine.events[0][1] and "CareContext" not in engine.events[0][1]
    sim.record("S-default", synth_wav(1), chunk_seconds=1)
    h = bearer(sim, client_key)
    # When a section outside the default set is sent  Then 422
    assert call(sim, "DocumentationReady", doc_body("S-default", 1, ["29545-1"]), h).status_code == 422
    # When the session is complete  Then documentation is refused with 409
    sim.complete("S-default", "Cancelled")
    r = call(sim, "DocumentationReady", doc_body("S-default", 1, ["10164-2"]), h)
    assert r.status_code == 409 and r.json()["Error"] == "SessionClosed"


def test_bad_simulator_setup_names_the_field(tmp_path) -> None:
    # Given a key that is not a key, an unknown algorithm, a file that is not audio
    from chartbridge.core.errors import InputError

    for kwargs, field in (({"epic_key": b"not a pem"}, "epic_key"), ({"epic_alg": "HS256"}, "epic_alg"),
                          ({"clients": {"c": "garbage"}}, "key")):
        # When the simulator is built  Then the error names the field
        with pytest.raises(InputError) as err:
            EpicSimulator(**kwargs)
        assert err.value.field == field
    with EpicSimulator() as s:
        s.begin_session(ORG, session_id="S-x")
        with pytest.raises(InputError) as err:
            s.record("S-x", b"RIFF not a wav")
        assert err.value.field == "wav"


def test_opening_the_haiku_web_view_is_a_fresh_ehr_launch_each_time(sim: EpicSimulator) -> None:
    from urllib.parse import parse_qs, urlsplit

    sim.begin_session("demo-epic", session_id="AMB-OPEN-1")
    url = sim.haiku_open_url("AMB-OPEN-1")
    first = httpx.get(url, follow_redirects=False)
    second = httpx.get(url, follow_redirects=False)
    assert first.status_code == second.status_code == 302
    locations = [urlsplit(r.headers["location"]) for r in (first, second)]
    assert all(loc.path == "/orgs/demo-epic/epic/haiku/launch" for loc in locations)
    queries = [parse_qs(loc.query) for loc in locations]
    assert all(q["session"] == ["AMB-OPEN-1"] and q["iss"] == [sim.smart.fhir_base] for q in queries)
    assert queries[0]["launch"] != queries[1]["launch"]          # a new handle per opening
    context = sim.smart.state.launches[queries[0]["launch"][0]]
    assert (context.patient, context.encounter) == ("eJzlzKe3KPzAV5TtkxmNivQ3", "eoK8nLRcEypNjtns4dgnF3Q3")
