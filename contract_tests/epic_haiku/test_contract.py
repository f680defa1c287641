"""The Epic Haiku contract suite: the real engine against the Epic simulator, over HTTP.

Transcription and drafting are replaced by small deterministic fakes here (the chunks are
synthetic tones); the real audio path is exercised by the demo test and tests/transcription.
"""
from __future__ import annotations

import os
import time
import uuid

import httpx
import pytest

from chartbridge.core.models import (NoteSection, SessionStatus, VersionState, WriteStatus)
from chartbridge.core.ports import GeneratedNote

from .simulator import synth_wav
from .stack import ORG, ChunkTranscriber, EpicStack


class ThreeSections:
    """HPI, ROS and A&P, each citing every segment (what matters here is the contract)."""

    name, version = "fake-sections", "1"

    def generate(self, segments, *, allowed_sections, note_type=None, settings=None):
        ids = [s.id for s in segments]
        text = " ".join(s.text for s in segments)
        return GeneratedNote([NoteSection(code=c, text=f"{c}: {text}", segment_ids=ids)
                              for c in ("10164-2", "10187-3", "51847-2") if c in allowed_sections],
                             "fake", "1")


AUDIO = synth_wav(25)           # three chunks of 10 s


LIVE_URL = os.environ.get("CHARTBRIDGE_CONTRACT_BASE_URL")


@pytest.fixture
def stack(tmp_path, database_url):
    """SQLite with the in-process broker (the embedded default); PostgreSQL with Redis (the
    production pairing), each job on a queue of its own test."""
    if LIVE_URL:
        pytest.skip("this scenario needs Epic to deliver callbacks, which only the simulator "
                    "can be made to do; against a site's sandbox the live checks below run")
    broker_url = "" if database_url.startswith("sqlite") else redis_url()
    with EpicStack(tmp_path, database_url, broker_url=broker_url,
                   queue=f"epic-contract-{uuid.uuid4().hex[:8]}",
                   transcriber_factory=lambda org: ChunkTranscriber(),
                   generator_factory=lambda org: ThreeSections(), sweep_interval_s=0.5) as s:
        yield s


def redis_url() -> str:
    import redis
    url = "redis://127.0.0.1:6379/14"
    try:
        redis.Redis.from_url(url).ping()
    except redis.exceptions.ConnectionError as exc:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            raise
        pytest.skip(f"No connection to Redis: {exc}")
    return url


def wait_until(predicate, timeout=30.0, what="condition"):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"{what} not met before the deadline"
        time.sleep(0.05)


def settled(stack, sid, n=1):
    """The engine has recorded the outcome of its n writes for this session."""
    wait_until(lambda: len(stack.ledger_rows(sid)) == n and all(
        r.status in (WriteStatus.SUCCEEDED, WriteStatus.FAILED) for r in stack.ledger_rows(sid)),
        what="ledger rows settled")
    return stack.ledger_rows(sid)


def _sections(doc):
    return [s["SectionID"] for s in doc["body"]["Sections"]] if "body" in doc else \
        [s["SectionID"] for s in doc["Sections"]]


def test_happy_path_begin_to_signed(stack):
    sim = stack.sim
    # Given a session begun by Epic
    begin = sim.begin_session(ORG, session_id="AMB-1")
    assert begin.status == 200 and begin.response == {"Status": "Accepted"}
    # When the clinician records and stops
    sim.record("AMB-1", AUDIO, chunk_seconds=10, status="Stopped")
    doc = sim.wait_documentation("AMB-1", 1, timeout=30)
    # Then Epic got the allowed sections once, and the ledger shows the write
    assert sorted(_sections(doc)) == ["10164-2", "10187-3", "51847-2"]
    (row,) = settled(stack, "AMB-1")
    assert row.status == WriteStatus.SUCCEEDED and row.target == "epic_haiku"
    session = stack.session("AMB-1")
    assert [(i.value, i.type) for i in session.patient_ids] == [("Z4481", "MRN"), ("eJzlzKe3KPzAV5TtkxmNivQ3", "FHIR")]
    # And signing closes the session; a late event is acknowledged and ignored
    assert sim.complete("AMB-1", "Signed").status == 200
    assert stack.session("AMB-1").status == SessionStatus.SIGNED
    assert sim.announce_recording("AMB-1").status == 200
    assert sim.call_count("DocumentationReady") == 1


def test_duplicate_and_reordered_callbacks_document_once(stack):
    sim = stack.sim
    sim.begin_session(ORG, session_id="AMB-2")
    assert sim.begin_session is not None
    sim.record("AMB-2", AUDIO, chunk_seconds=10, status="Stopped", duplicate=True, reorder=True)
    sim.wait_documentation("AMB-2", 1, timeout=30)
    wait_until(lambda: stack.session("AMB-2") and all(
        r.state == VersionState.DONE for r in stack.engine.store.recordings(ORG, stack.session("AMB-2").id)))
    assert sim.call_count("DocumentationReady") == 1
    assert all(d.status == 200 for d in sim.deliveries)
    assert len(settled(stack, "AMB-2")) == 1


def test_paused_then_more_audio_then_stopped_documents_only_the_newest(stack):
    sim = stack.sim
    sim.begin_session(ORG, session_id="AMB-3")
    sim.record("AMB-3", AUDIO, chunk_seconds=10, status="Paused")
    sim.wait_calls("AmbientRecordingsProcessed", 1, timeout=30)
    sim.record("AMB-3", synth_wav(12), chunk_seconds=10, status="Stopped")
    doc = sim.wait_documentation("AMB-3", 2, timeout=30)
    assert doc is not None
    assert [c for c, _ in sim.call_log("DocumentationReady")] == ["DocumentationReady"]
    kinds = sorted(r.kind for r in settled(stack, "AMB-3", 2))
    assert kinds == ["handoff", "notice"]
    # chunks of version 1 were downloaded once each and never re-announced
    assert sim.call_count("GetAmbientRecordingChunk") == 5


def test_edited_section_is_never_sent_again(stack):
    sim = stack.sim
    sim.begin_session(ORG, session_id="AMB-4")
    sim.record("AMB-4", AUDIO, chunk_seconds=10, status="Stopped")
    sim.wait_documentation("AMB-4", 1, timeout=30)
    # When the clinician edits A&P in Epic and then records more
    assert sim.edit_sections("AMB-4", ["51847-2"]).status == 200
    sim.record("AMB-4", synth_wav(10), chunk_seconds=10, status="Stopped")
    doc = sim.wait_documentation("AMB-4", 2, timeout=30)
    # Then version 2 holds every section but the edited one (Epic would answer 422 otherwise)
    assert sorted(_sections(doc)) == ["10164-2", "10187-3"]
    assert all(status == 200 for _, status in sim.call_log("DocumentationReady"))


@pytest.mark.parametrize("fault", [dict(status=503, times=2), dict(status=429, times=2, retry_after=1)])
def test_transient_failures_are_retried_to_success_without_a_duplicate(stack, fault):
    sim = stack.sim
    sim.faults.add("DocumentationReady", **fault)
    sim.begin_session(ORG, session_id="AMB-5")
    sim.record("AMB-5", AUDIO, chunk_seconds=10, status="Stopped")
    sim.wait_documentation("AMB-5", 1, timeout=45)
    statuses = [s for _, s in sim.call_log("DocumentationReady")]
    assert statuses == [fault["status"]] * 2 + [200]
    assert len(sim.documentation("AMB-5")) == 1
    (row,) = settled(stack, "AMB-5")
    assert row.status == WriteStatus.SUCCEEDED and row.attempts == 3


def test_expired_token_is_refreshed_once(stack):
    sim = stack.sim
    sim.begin_session(ORG, session_id="AMB-6")
    sim.record("AMB-6", AUDIO, chunk_seconds=10, status="Paused")
    sim.wait_calls("AmbientRecordingsProcessed", 1, timeout=30)
    before = sim.token_requests
    sim.expire_tokens()
    sim.record("AMB-6", synth_wav(5), chunk_seconds=10, status="Stopped")
    sim.wait_documentation("AMB-6", 2, timeout=30)
    assert sim.token_requests == before + 1
    assert 401 in [s for _, s in sim.call_log("GetAmbientRecordingChunk")]


def test_permission_denied_is_surfaced_not_retried(stack):
    sim = stack.sim
    sim.faults.add("DocumentationReady", status=403, times=5)
    sim.begin_session(ORG, session_id="AMB-7")
    sim.record("AMB-7", AUDIO, chunk_seconds=10, status="Stopped")
    wait_until(lambda: stack.ledger_rows("AMB-7") and stack.ledger_rows("AMB-7")[0].status == WriteStatus.FAILED,
               what="the write failing")
    (row,) = stack.ledger_rows("AMB-7")
    assert row.outcome["status"] == 403 and row.attempts == 1
    wait_until(lambda: stack.engine.store.recordings(ORG, stack.session("AMB-7").id)[0].state == VersionState.FAILED)
    assert sim.call_count("DocumentationReady") == 1


def test_stale_version_conflict_is_recorded_not_retried(stack):
    sim = stack.sim
    sim.begin_session(ORG, session_id="AMB-8")
    # Epic knows of version 2 before the engine documents version 1
    engine_url, sim.engine_url = sim.engine_url, None
    sim.record("AMB-8", AUDIO, chunk_seconds=10, status="Stopped")
    sim.record("AMB-8", synth_wav(5), chunk_seconds=10, status="Stopped")
    sim.engine_url = engine_url
    for seq in (1, 2, 3):
        sim.announce_chunk("AMB-8", seq)
    sim.announce_recording("AMB-8", version=1)
    wait_until(lambda: stack.ledger_rows("AMB-8") and stack.ledger_rows("AMB-8")[0].status == WriteStatus.FAILED,
               what="the stale write failing")
    assert [s for _, s in sim.call_log("DocumentationReady")] == [409]
    assert sim.documentation("AMB-8") == []


def _post(stack, event, body, token="valid"):
    url = f"{stack.engine_url}/orgs/{ORG}/epic/ambient/{event}"
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = "Bearer " + stack.sim.make_inbound_token(url, ORG, mode=token)
    return httpx.post(url, content=body if isinstance(body, (bytes, str)) else None,
                      json=None if isinstance(body, (bytes, str)) else body, headers=headers)


BEGIN = {"SessionID": "AMB-X", "UserID": {"ID": "E1", "Type": "EXTERNAL"},
         "PatientIDs": [{"ID": "Z1", "Type": "MRN"}], "EncounterIDs": [{"ID": "3001", "Type": "CSN"}],
         "CallbackURL": "http://127.0.0.1:9/cb/"}


@pytest.mark.parametrize("mode", ["expired", "wrong_aud", "wrong_key", "wrong_iss", "missing", "too_long", "alg_none", "no_jti"])
def test_bad_tokens_get_401_and_store_nothing(stack, mode):
    modes = {"missing": None}
    resp = _post(stack, "AmbientSessionBegin", BEGIN, token=modes.get(mode, mode))
    assert resp.status_code == 401 and set(resp.json()) == {"Error", "Detail"}
    assert stack.session("AMB-X") is None


def test_replayed_token_gets_401(stack):
    url = f"{stack.engine_url}/orgs/{ORG}/epic/ambient/AmbientSessionBegin"
    token = stack.sim.make_inbound_token(url, ORG)
    first = httpx.post(url, json=BEGIN, headers={"Authorization": f"Bearer {token}"})
    again = httpx.post(url, json=BEGIN, headers={"Authorization": f"Bearer {token}"})
    assert (first.status_code, again.status_code) == (200, 401)


@pytest.mark.parametrize("body,field", [
    (b"{not json", "body"),
    ({k: v for k, v in BEGIN.items() if k != "PatientIDs"}, "PatientIDs"),
    ({**BEGIN, "PatientIDs": [{"Type": "MRN"}]}, "PatientIDs[0].ID"),
    ({**BEGIN, "AllowedNoteSections": ["99999-9"]}, "allowed_sections[0]"),
])
def test_bad_bodies_get_400_naming_the_field_and_store_nothing(stack, body, field):
    resp = _post(stack, "AmbientSessionBegin", body)
    assert resp.status_code == 400
    assert field in resp.json()["Detail"] or resp.json().get("Field") == field or field in resp.text
    assert "Z1" not in resp.text                      # no identifier echoed
    assert stack.session("AMB-X") is None


def test_unknown_session_and_unknown_org_are_404_and_contradiction_is_409(stack):
    chunk = {"SessionID": "NEVER", "RecordingID": "R1", "RecordingVersion": 1, "ChunkSequence": 1}
    assert _post(stack, "RecordingChunkAvailable", chunk).status_code == 404
    url = f"{stack.engine_url}/orgs/no-such-org/epic/ambient/AmbientSessionBegin"
    assert httpx.post(url, json=BEGIN).status_code == 404
    assert _post(stack, "AmbientSessionBegin", BEGIN).status_code == 200
    assert _post(stack, "AmbientSessionBegin", BEGIN).status_code == 200          # duplicate
    other = {**BEGIN, "PatientIDs": [{"ID": "Z2", "Type": "MRN"}]}
    assert _post(stack, "AmbientSessionBegin", other).status_code == 409
    assert [i.value for i in stack.session("AMB-X").patient_ids] == ["Z1"]


# -- live mode: a site's Epic sandbox (chartbridge contract-test --vendor epic_haiku --base-url)
def _live(name: str) -> str:
    value = os.environ.get(f"CHARTBRIDGE_CONTRACT_{name}")
    if not value:
        pytest.skip(f"live Epic check needs CHARTBRIDGE_CONTRACT_{name} (--{name.lower().replace('_', '-')})")
    return value


@pytest.mark.skipif(not LIVE_URL, reason="live mode only: give --base-url to check a site's Epic")
def test_live_backend_token_is_issued_for_our_assertion():
    """Our SMART Backend Services assertion is accepted by the site's token endpoint."""
    from chartbridge.adapters.epic_haiku.client import BackendTokenSource
    from chartbridge.config.secrets import resolve
    from chartbridge.core.clock import SystemClock

    class NoCache:                      # a live check never reuses or stores a token
        def get(self, org_id, key): return None
        def put(self, org_id, key, token, expires_at): pass
        def invalidate(self, org_id, key): pass

    token_url = os.environ.get("CHARTBRIDGE_CONTRACT_TOKEN_URL") or LIVE_URL.rstrip("/") + "/oauth2/token"
    key_ref = _live("KEY")
    with httpx.Client(timeout=15) as http:
        source = BackendTokenSource(org_id="contract", client_id=_live("CLIENT_ID"), token_url=token_url,
                                    key_id=os.environ.get("CHARTBRIDGE_CONTRACT_KEY_ID", "chartbridge"),
                                    algorithm=os.environ.get("CHARTBRIDGE_CONTRACT_ALG", "RS384"),
                                    private_key=lambda: resolve(key_ref), cache=NoCache(),
                                    clock=SystemClock(), http=http)
        assert source.token()


@pytest.mark.skipif(not LIVE_URL, reason="live mode only: give --base-url to check a site's Epic")
def test_live_epic_signing_keys_are_published():
    """Epic's JWKS (what verifies its calls to us) is reachable and holds RS384/ES384 keys."""
    url = os.environ.get("CHARTBRIDGE_CONTRACT_JWKS_URL") or LIVE_URL.rstrip("/") + "/.well-known/jwks.json"
    keys = httpx.get(url, timeout=15).json()["keys"]
    assert keys and all(k.get("kty") in ("RSA", "EC") and k.get("kid") for k in keys)
