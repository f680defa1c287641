"""Outbound: SMART Backend Services tokens and the Ambient client's error translation."""
from __future__ import annotations

import base64
import json
import socket
from datetime import timedelta
from email.utils import format_datetime

import httpx
import pytest
from epic_support import (CLIENT_ID, KID, MemoryTokenCache, Recorder, answer, client_for, pem,
                          private_key, sim, tokens_for, token_ok)
from joserfc import jwt

from chartbridge.adapters.epic_haiku.client import (ASSERTION_TYPE, BackendTokenSource, EpicClient,
                                                    retry_after_seconds)
from chartbridge.core.errors import PermanentError, TransientError
from chartbridge.ledger.tokens import DbTokenCache

__all__ = ["sim"]

TOKEN_URL = "https://epic.test/oauth2/token"


def _segment(token: str, i: int) -> dict:
    part = token.split(".")[i]
    return json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))


@pytest.mark.parametrize("alg", ["RS384", "ES384"])
def test_client_assertion_claims_and_header(clock, alg):
    # Given a token source signing with the org's key
    rec = Recorder().on("/oauth2/token", token_ok())
    cache = MemoryTokenCache(clock)
    tokens = tokens_for(rec.client(), clock, cache, alg=alg)

    # When two tokens are fetched (the first one dropped from the cache in between)
    tokens.token()
    cache.invalidate("demo-epic", tokens.cache_key)
    tokens.token()

    # Then each request is a client-credentials grant with a JWT assertion that verifies
    # with the org's public key and follows SMART Backend Services
    sent = rec.calls("/oauth2/token")
    assert len(sent) == 2
    assertions = []
    for req in sent:
        form = dict(httpx.QueryParams(req.content.decode()))
        assert form["grant_type"] == "client_credentials"
        assert form["client_assertion_type"] == ASSERTION_TYPE
        header = _segment(form["client_assertion"], 0)
        assert header["alg"] == alg and header["kid"] == KID
        claims = jwt.decode(form["client_assertion"], private_key(alg), algorithms=[alg]).claims
        assert claims["iss"] == claims["sub"] == CLIENT_ID
        assert claims["aud"] == TOKEN_URL
        assert 0 < claims["exp"] - claims["iat"] <= 300
        assert claims["exp"] <= clock.now().timestamp() + 300
        assertions.append(claims)
    # a fresh jti per assertion
    assert assertions[0]["jti"] != assertions[1]["jti"]


def test_token_cached_and_shared_across_clients_via_db(db, clock, sim):
    # Given two clients (two workers) sharing one DbTokenCache, against the simulator
    cache = DbTokenCache(db, clock)
    sid = "AMB-SHARED-1"
    sim.begin_session("demo-epic", session_id=sid, deliver=False)
    sim.record(sid, _wav(), chunk_seconds=1, status="Paused")
    http_a, http_b = httpx.Client(), httpx.Client()
    a = client_for(http_a, clock, cache, token_url=sim.token_url, callback_url=sim.callback_url)
    b = client_for(http_b, clock, cache, token_url=sim.token_url, callback_url=sim.callback_url)

    # When both download a chunk
    audio_a, ctype = a.get_chunk(sid, "R1", 1, 1)
    audio_b, _ = b.get_chunk(sid, "R1", 1, 1)

    # Then one token served both, and the audio came back as announced
    assert sim.call_count("token") == 1
    assert audio_a == audio_b and audio_a[:4] == b"RIFF" and ctype == "audio/wav"

    # When the token's lifetime passes
    clock.advance(301)
    b.get_chunk(sid, "R1", 1, 2)

    # Then a new one is fetched once
    assert sim.call_count("token") == 2
    http_a.close(), http_b.close()


def test_401_refreshes_token_once_and_retries_once(clock):
    # Given Epic rejects the first token
    tokens_issued: list = []
    rec = (Recorder().on("/oauth2/token", token_ok(counter=tokens_issued))
           .on("/AmbientRecordingsProcessed",
               answer(401, {"Error": "TokenExpired", "Detail": "expired"}), answer(200, {})))
    client = client_for(rec.client(), clock)

    # When a call is made
    client.recordings_processed("AMB-1", 2)

    # Then a second token was fetched and the call retried exactly once with it
    calls = rec.calls("/AmbientRecordingsProcessed")
    assert len(tokens_issued) == 2 and len(calls) == 2
    assert calls[0].headers["Authorization"] == "Bearer tok-1"
    assert calls[1].headers["Authorization"] == "Bearer tok-2"


def test_second_401_is_permanent_not_a_loop(clock):
    # Given Epic rejects every token
    rec = (Recorder().on("/oauth2/token", token_ok())
           .on("/DocumentationReady", answer(401, {"Error": "Unauthorized", "Detail": "no"})))
    client = client_for(rec.client(), clock)

    # When a call is made, Then it fails permanently after one refresh and one retry
    with pytest.raises(PermanentError) as err:
        client.documentation_ready(_doc_body())
    assert err.value.status == 401
    assert len(rec.calls("/DocumentationReady")) == 2
    assert len(rec.calls("/oauth2/token")) == 2


@pytest.mark.parametrize("retry_after,expected", [("7", 7.0), ("date", 30.0)])
def test_429_is_transient_with_retry_after(clock, retry_after, expected):
    # Given Epic is rate limiting, with Retry-After in seconds or as an HTTP date
    if retry_after == "date":
        retry_after = format_datetime(clock.now() + timedelta(seconds=30), usegmt=True)
    rec = (Recorder().on("/oauth2/token", token_ok())
           .on("/GetAmbientRecordingChunk", answer(429, {"Error": "TooManyRequests", "Detail": "slow"},
                                                   headers={"Retry-After": retry_after})))
    client = client_for(rec.client(), clock)

    # When a chunk is requested, Then the error is transient, not delivered, and says when
    with pytest.raises(TransientError) as err:
        client.get_chunk("AMB-1", "R1", 1, 1)
    assert err.value.status == 429 and err.value.retry_after == pytest.approx(expected)
    assert err.value.maybe_delivered is False
    assert len(rec.calls("/GetAmbientRecordingChunk")) == 1      # no retry here


@pytest.mark.parametrize("status", [500, 502, 503])
def test_5xx_is_transient_and_maybe_delivered(clock, status):
    rec = (Recorder().on("/oauth2/token", token_ok())
           .on("/DocumentationReady", answer(status, {"Error": "ServiceUnavailable", "Detail": "x"})))
    client = client_for(rec.client(), clock)
    with pytest.raises(TransientError) as err:
        client.documentation_ready(_doc_body())
    assert err.value.status == status and err.value.maybe_delivered is True
    assert len(rec.calls("/DocumentationReady")) == 1


@pytest.mark.parametrize("status,code", [(400, "InvalidBody"), (403, "PermissionDenied"),
                                         (404, "NotAvailable"), (409, "StaleVersion"),
                                         (410, "Gone"), (422, "SectionRejected")])
def test_contract_errors_are_permanent_with_status_and_vendor_code(clock, status, code):
    rec = (Recorder().on("/oauth2/token", token_ok())
           .on("/DocumentationReady", answer(status, {"Error": code, "Detail": "reason here"})))
    client = client_for(rec.client(), clock)
    with pytest.raises(PermanentError) as err:
        client.documentation_ready(_doc_body())
    assert err.value.status == status and err.value.vendor_code == code
    assert "DocumentationReady" in err.value.message and "reason here" in err.value.message
    assert len(rec.calls("/DocumentationReady")) == 1


def test_timeout_is_transient_maybe_delivered(clock):
    # Given an Epic that accepts the connection and never answers
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    port = srv.getsockname()[1]
    rec = Recorder().on("/oauth2/token", token_ok())
    tokens = tokens_for(rec.client(), clock, MemoryTokenCache(clock))
    with httpx.Client() as http:
        client = EpicClient(f"http://127.0.0.1:{port}/Ambient/", tokens, http, timeout=0.3)
        # When a call is made, Then it times out as a transient error that may have landed
        with pytest.raises(TransientError) as err:
            client.documentation_ready(_doc_body())
    srv.close()
    assert err.value.maybe_delivered is True and "timed out" in err.value.message


def test_connection_refused_is_transient_not_delivered(clock):
    # Given nothing listens on the callback port
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    rec = Recorder().on("/oauth2/token", token_ok())
    tokens = tokens_for(rec.client(), clock, MemoryTokenCache(clock))
    with httpx.Client() as http:
        client = EpicClient(f"http://127.0.0.1:{port}/Ambient/", tokens, http, timeout=1)
        with pytest.raises(TransientError) as err:
            client.recordings_processed("AMB-1", 1)
    assert err.value.maybe_delivered is False


def test_every_call_carries_correlation_id_and_bearer(clock):
    rec = (Recorder().on("/oauth2/token", token_ok())
           .on("/GetAmbientRecordingChunk", answer(200, content=b"RIFF....",
                                                   headers={"Content-Type": "audio/wav"}))
           .on("/AmbientRecordingsProcessed", answer(200, {}))
           .on("/DocumentationReady", answer(200, {"Accepted": True})))
    client = client_for(rec.client(), clock)
    client.get_chunk("AMB-1", "R1", 1, 1, correlation_id="c-1")
    client.recordings_processed("AMB-1", 1, correlation_id="c-1")
    client.documentation_ready(_doc_body())          # none given: one is made up
    ambient = [r for r in rec.requests if "/Ambient/" in r.url.path]
    assert [r.headers.get("X-Correlation-ID") for r in ambient][:2] == ["c-1", "c-1"]
    assert ambient[2].headers.get("X-Correlation-ID")
    assert all(r.headers["Authorization"] == "Bearer tok-1" for r in ambient)
    assert json.loads(ambient[0].content) == {"SessionID": "AMB-1", "RecordingID": "R1",
                                              "RecordingVersion": 1, "ChunkSequence": 1}


def test_token_endpoint_refusal_is_permanent_and_5xx_transient(clock):
    rec = Recorder().on("/oauth2/token", answer(400, {"error": "invalid_client",
                                                      "error_description": "bad assertion"}))
    with pytest.raises(PermanentError) as err:
        tokens_for(rec.client(), clock, MemoryTokenCache(clock)).token()
    assert err.value.vendor_code == "invalid_client" and err.value.status == 400
    rec = Recorder().on("/oauth2/token", answer(503, {}, headers={"Retry-After": "3"}))
    with pytest.raises(TransientError) as err:
        tokens_for(rec.client(), clock, MemoryTokenCache(clock)).token()
    assert err.value.retry_after == 3 and err.value.maybe_delivered is False


def test_bad_private_key_is_permanent_and_names_the_field(clock):
    rec = Recorder().on("/oauth2/token", token_ok())
    tokens = BackendTokenSource(org_id="o", client_id=CLIENT_ID, token_url=TOKEN_URL, key_id=KID,
                                algorithm="ES384", private_key=pem("RS384"),
                                cache=MemoryTokenCache(clock), clock=clock, http=rec.client())
    with pytest.raises(PermanentError) as err:
        tokens.token()
    assert "private_key" in err.value.message and "PRIVATE" not in err.value.message
    assert rec.requests == []


def test_retry_after_parsing(clock):
    assert retry_after_seconds("0", clock.now()) == 0
    assert retry_after_seconds("2.5", clock.now()) == 2.5
    assert retry_after_seconds("garbage", clock.now()) is None
    past = format_datetime(clock.now() - timedelta(seconds=60), usegmt=True)
    assert retry_after_seconds(past, clock.now()) == 0


def test_against_simulator_expired_token_refreshes_once(clock, sim):
    # Given a token the simulator has since expired
    sid = "AMB-EXP-1"
    sim.begin_session("demo-epic", session_id=sid, deliver=False)
    sim.record(sid, _wav(), chunk_seconds=1, status="Paused")
    with httpx.Client() as http:
        client = client_for(http, clock, token_url=sim.token_url, callback_url=sim.callback_url)
        client.get_chunk(sid, "R1", 1, 1)
        sim.expire_tokens()
        # When the next call is made, Then it succeeds after exactly one more token
        client.recordings_processed(sid, 1)
    assert sim.call_count("token") == 2
    assert ("AmbientRecordingsProcessed", 200) in sim.call_log("AmbientRecordingsProcessed")


def _doc_body() -> dict:
    return {"SessionID": "AMB-1", "RecordingVersion": 1,
            "GeneratedInstant": "2026-11-21T21:01:00+00:00",
            "Sections": [{"SectionID": "10164-2", "ContentType": "text/plain", "Text": "x"}]}


def _wav() -> bytes:
    from contract_tests.epic_haiku import synth_wav
    return synth_wav(2.0)
