"""Shared pieces for the Epic Haiku adapter tests: keys, the simulator on a frozen clock,
and a recording httpx transport. Fixtures defined here are imported by the test modules."""
from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone

import httpx
import pytest
from joserfc.jwk import ECKey, RSAKey

from chartbridge.adapters.epic_haiku.client import BackendTokenSource, EpicClient
from chartbridge.core.models import (ApprovalState, Identifier, NoteDraft, NoteSection,
                                     Provenance, WriteCommand, WriteKind)
from contract_tests.epic_haiku import EpicSimulator

ORG = "demo-epic"
CLIENT_ID = "chartbridge-backend"
KID = "cb-2026"
EPIC_ISS = "epic-sim-client"

_KEYS: dict[str, RSAKey | ECKey] = {}


def private_key(alg: str = "RS384") -> RSAKey | ECKey:
    """One generated key per algorithm per test run (RSA generation is not free)."""
    if alg not in _KEYS:
        key = (RSAKey.generate_key(2048, private=True) if alg == "RS384"
               else ECKey.generate_key("P-384", private=True))
        _KEYS[alg] = key
    return _KEYS[alg]


def pem(alg: str = "RS384") -> str:
    return private_key(alg).as_pem(private=True).decode()


def public_jwk(alg: str = "RS384") -> dict:
    jwk = private_key(alg).as_dict(private=False)
    jwk.update(kid=KID, alg=alg, use="sig")
    return jwk


@pytest.fixture
def sim(clock):
    """The Epic simulator, started on 127.0.0.1:0, on the test's frozen clock, with our
    backend client registered."""
    s = EpicSimulator(clock=lambda: clock.now().timestamp(), epic_client_id=EPIC_ISS,
                      clients={CLIENT_ID: {"keys": [public_jwk("RS384")]}})
    s.start()
    yield s
    s.stop()


class MemoryTokenCache:
    """A TokenCache port double for tests that do not need the database."""

    def __init__(self, clock) -> None:
        self.clock, self.rows = clock, {}

    def get(self, org_id, key):
        row = self.rows.get((org_id, key))
        return row[0] if row and row[1] > self.clock.now() else None

    def put(self, org_id, key, token, expires_at):
        self.rows[(org_id, key)] = (token, expires_at)

    def invalidate(self, org_id, key):
        self.rows.pop((org_id, key), None)


@dataclass
class Recorder:
    """An httpx MockTransport whose answers are scripted per path suffix."""

    answers: dict[str, list[Callable[[httpx.Request], httpx.Response]]] = field(default_factory=dict)
    requests: list[httpx.Request] = field(default_factory=list)

    def on(self, suffix: str, *responders) -> Recorder:
        self.answers.setdefault(suffix, []).extend(responders)
        return self

    def handler(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        for suffix, queue in self.answers.items():
            if request.url.path.endswith(suffix):
                responder = queue.pop(0) if len(queue) > 1 else queue[0]
                return responder(request)
        return httpx.Response(404, json={"Error": "NoRoute", "Detail": "no scripted answer"})

    def client(self) -> httpx.Client:
        return httpx.Client(transport=httpx.MockTransport(self.handler))

    def calls(self, suffix: str) -> list[httpx.Request]:
        return [r for r in self.requests if r.url.path.endswith(suffix)]


def token_ok(ttl: int = 300, counter: list | None = None):
    def respond(request: httpx.Request) -> httpx.Response:
        n = len(counter) + 1 if counter is not None else 1
        if counter is not None:
            counter.append(request)
        return httpx.Response(200, json={"access_token": f"tok-{n}", "token_type": "Bearer",
                                         "expires_in": ttl})
    return respond


def answer(status: int, body=None, headers=None, content: bytes | None = None):
    def respond(request: httpx.Request) -> httpx.Response:
        if content is not None:
            return httpx.Response(status, content=content, headers=headers)
        return httpx.Response(status, json=body if body is not None else {}, headers=headers)
    return respond


def tokens_for(http: httpx.Client, clock, cache, *, token_url: str = "https://epic.test/oauth2/token",
               alg: str = "RS384") -> BackendTokenSource:
    return BackendTokenSource(org_id=ORG, client_id=CLIENT_ID, token_url=token_url, key_id=KID,
                              algorithm=alg, private_key=lambda: pem(alg), cache=cache,
                              clock=clock, http=http, timeout_s=2.0)


def client_for(http: httpx.Client, clock, cache=None, *,
               callback_url: str = "https://epic.test/Ambient/", **kw) -> EpicClient:
    tokens = tokens_for(http, clock, cache or MemoryTokenCache(clock), **kw)
    return EpicClient(callback_url, tokens, http, timeout=2.0, clock=clock)


def draft(created_at: datetime | None = None, sections=(("10164-2", "Cough for three days."),
                                                       ("51847-2", "Viral URI; fluids, rest."))):
    return NoteDraft(id="d1", session_id="s1", version=1, recording_version=2,
                     sections=[NoteSection(code=c, text=t) for c, t in sections],
                     provenance=Provenance(transcriber="fw", transcriber_model="tiny.en",
                                           generator="rules", generator_version="1",
                                           template_id="progress", template_version="1"),
                     created_at=created_at or datetime(2026, 11, 21, 21, 1, tzinfo=timezone.utc))


def command(kind: WriteKind = WriteKind.HANDOFF, *, external_session_id: str = "AMB-2026-000123",
            version: int = 2, callback_url: str | None = None, note: NoteDraft | None = None):
    return WriteCommand(
        org_id=ORG, target="epic_haiku", session_id="s1", encounter_key="300012345",
        note_version=version,
        resource_kind="DocumentationReady" if kind == WriteKind.HANDOFF else "AmbientRecordingsProcessed",
        approval_state=ApprovalState.PRELIMINARY, kind=kind, correlation_id="corr-1",
        patient_ids=[Identifier(value="Z4481", type="MRN")],
        encounter_ids=[Identifier(value="300012345", type="CSN")],
        draft=(note or draft()) if kind == WriteKind.HANDOFF else None,
        extra={"external_session_id": external_session_id, "recording_id": "R1",
               "recording_version": version, "callback_url": callback_url})


def body_of(request: httpx.Request) -> dict:
    return json.loads(request.content)
