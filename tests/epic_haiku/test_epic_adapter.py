"""The Epic Haiku EhrAdapter: deterministic DocumentationReady, notices, chunk download and
the factory, mostly against the Epic simulator."""
from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import httpx
import pytest
from epic_support import (CLIENT_ID, KID, ORG, MemoryTokenCache, command, draft, pem, sim,
                          tokens_for)

from chartbridge.adapters.epic_haiku.adapter import EpicHaikuAdapter, build
from chartbridge.adapters.epic_haiku.config import EpicHaikuConfig
from chartbridge.adapters.registry import registry
from chartbridge.core.errors import PermanentError
from chartbridge.core.models import WriteCommand, WriteKind
from chartbridge.core.ports import EhrAdapter
from chartbridge.ledger.tokens import DbReplayGuard, DbTokenCache
from contract_tests.epic_haiku import synth_wav

__all__ = ["sim"]


def _config(sim=None, **kw) -> EpicHaikuConfig:
    base = sim.base_url if sim else "https://epic.test"
    data = dict(client_id=CLIENT_ID, token_url=f"{base}/oauth2/token", private_key="env:EPIC_TEST_KEY",
                key_id=KID, algorithm="RS384", timeout_s=5,
                inbound={"issuer": "epic-sim-client", "jwks_url": f"{base}/.well-known/jwks.json"})
    data.update(kw)
    return EpicHaikuConfig.model_validate(data)


def _adapter(sim, clock, http, **kw) -> EpicHaikuAdapter:
    tokens = tokens_for(http, clock, MemoryTokenCache(clock), token_url=sim.token_url)
    return EpicHaikuAdapter(org_id=ORG, config=_config(sim), tokens=tokens, http=http, clock=clock,
                            **kw)


@pytest.fixture
def http():
    with httpx.Client() as c:
        yield c


def _stopped_session(sim, sid: str, versions=1) -> None:
    sim.begin_session(ORG, session_id=sid, deliver=False)
    for _ in range(versions):
        sim.record(sid, synth_wav(2.0), chunk_seconds=1, status="Stopped")


def test_documentation_ready_body_is_byte_for_byte_deterministic(sim, clock, http):
    # Given one handoff command, and the same command after a JSON round trip (as the
    # ledger stores and reloads it), with the draft time naive-UTC as some databases return it
    adapter = _adapter(sim, clock, http)
    cmd = command(callback_url=sim.callback_url)
    reloaded = WriteCommand.model_validate_json(cmd.model_dump_json())
    naive = cmd.model_copy(deep=True)
    naive.draft.created_at = datetime(2026, 11, 21, 21, 1)

    # When each is rendered
    bodies = {adapter.render(c).body for c in (cmd, cmd, reloaded, naive)}

    # Then the bytes are identical, and follow the page's DocumentationReady shape
    assert len(bodies) == 1
    body = json.loads(bodies.pop())
    assert body == {"SessionID": "AMB-2026-000123", "RecordingVersion": 2,
                    "GeneratedInstant": "2026-11-21T21:01:00+00:00",
                    "Sections": [{"SectionID": "10164-2", "ContentType": "text/plain",
                                  "Text": "Cough for three days."},
                                 {"SectionID": "51847-2", "ContentType": "text/plain",
                                  "Text": "Viral URI; fluids, rest."}]}


def test_generated_instant_keeps_an_offset_for_any_zone(sim, clock, http):
    adapter = _adapter(sim, clock, http)
    local = draft(created_at=datetime(2026, 11, 21, 15, 1, tzinfo=timezone(timedelta(hours=-6))))
    body = json.loads(adapter.render(command(note=local)).body)
    assert body["GeneratedInstant"] == "2026-11-21T21:01:00+00:00"


def test_handoff_resend_is_safe_and_reconcile_is_resend(sim, clock, http):
    # Given a stopped recording at Epic
    sid = "AMB-ADAPT-1"
    _stopped_session(sim, sid)
    adapter = _adapter(sim, clock, http)
    assert isinstance(adapter, EhrAdapter)
    cmd = command(external_session_id=sid, version=1, callback_url=sim.callback_url)

    # When the note is handed off, and (a lost answer) handed off again
    first = adapter.send(cmd)
    assert adapter.reconcile(cmd) is None
    second = adapter.send(cmd)

    # Then Epic holds one copy, and both outcomes name the same session version
    assert first.external_id == second.external_id == f"{sid}/v1"
    assert first.detail["status"] == 200
    assert len(sim.documentation(sid)) == 1
    assert sim.documentation(sid)[0]["Sections"][0]["Text"] == "Cough for three days."


def test_handoff_with_different_body_for_accepted_version_is_permanent_409(sim, clock, http):
    sid = "AMB-ADAPT-2"
    _stopped_session(sim, sid)
    adapter = _adapter(sim, clock, http)
    adapter.send(command(external_session_id=sid, version=1, callback_url=sim.callback_url))
    changed = draft(sections=(("10164-2", "Different text."),))
    with pytest.raises(PermanentError) as err:
        adapter.send(command(external_session_id=sid, version=1, callback_url=sim.callback_url,
                             note=changed))
    assert err.value.status == 409


def test_notice_and_fetch_chunk(sim, clock, http):
    # Given a paused recording
    sid = "AMB-ADAPT-3"
    sim.begin_session(ORG, session_id=sid, deliver=False)
    sim.record(sid, synth_wav(2.0), chunk_seconds=1, status="Paused")
    adapter = _adapter(sim, clock, http)

    # When a chunk is fetched and the version reported processed
    audio, ctype = adapter.fetch_chunk(sid, "R1", 1, 2, callback_url=sim.callback_url,
                                       correlation_id="corr-9")
    outcome = adapter.send(command(WriteKind.NOTICE, external_session_id=sid, version=1,
                                   callback_url=sim.callback_url))

    # Then the audio is a WAV and Epic recorded the report
    assert audio[:4] == b"RIFF" and ctype == "audio/wav"
    assert outcome.external_id == f"{sid}/v1"
    assert sim.session_state(sid)["processed_reports"] == [1]


def test_callback_url_outside_configured_base_is_refused(sim, clock, http):
    tokens = tokens_for(http, clock, MemoryTokenCache(clock), token_url=sim.token_url)
    cfg = _config(sim, callback_url=sim.callback_url)
    adapter = EpicHaikuAdapter(org_id=ORG, config=cfg, tokens=tokens, http=http, clock=clock)
    with pytest.raises(PermanentError):
        adapter.fetch_chunk("AMB-X", "R1", 1, 1, callback_url="https://evil.example/Ambient/")
    with pytest.raises(PermanentError):
        adapter.fetch_chunk("AMB-X", "R1", 1, 1,
                            callback_url=sim.base_url + "/interconnect/api/epic/2026/AmbientX/")
    # and without a session CallbackURL, the configured base is used
    assert adapter.client(None).base == sim.callback_url
    assert sim.call_count("token") == 0          # no token was sent anywhere


def test_unrenderable_commands_are_permanent(sim, clock, http):
    adapter = _adapter(sim, clock, http)
    cmd = command()
    cmd.extra = {"recording_version": 2}
    with pytest.raises(PermanentError, match="external_session_id"):
        adapter.send(cmd)
    cmd = command()
    cmd.kind = WriteKind.CREATE
    with pytest.raises(PermanentError):
        adapter.send(cmd)


@dataclass
class _Services:
    clock: object
    token_cache: object
    replay_guard: object
    http: object
    secrets: object


def test_factory_builds_from_org_config_with_site_section_ids(db, clock, sim, tmp_path, monkeypatch):
    # Given the demo org pointed at the simulator, whose A&P section has a site SectionID
    from chartbridge.config.loader import load_org_file
    text = Path("config/orgs/demo-epic.yaml").read_text()
    text = (text.replace("http://127.0.0.1:8081/oauth2/token", sim.token_url)
                .replace("http://127.0.0.1:8081/.well-known/jwks.json", sim.jwks_url)
                .replace('epic_section_id: "51847-2"', 'epic_section_id: "AP-1"')
                .replace("demo-epic-backend-client", CLIENT_ID)
                .replace("issuer: demo-epic-interconnect", "issuer: epic-sim-client"))
    (tmp_path / "demo-epic.yaml").write_text(text)
    org = load_org_file(tmp_path / "demo-epic.yaml")
    monkeypatch.setenv("DEMO_EPIC_PRIVATE_KEY", pem("RS384"))
    sim.register_client(CLIENT_ID, {"keys": [dict(_jwk(), kid="demo-epic-2026")]})
    services = _Services(clock=clock, token_cache=DbTokenCache(db, clock),
                         replay_guard=DbReplayGuard(db, clock),
                         http=lambda **kw: httpx.Client(**kw),
                         secrets=lambda ref, base=None: __import__("os").environ[ref.split(":", 1)[1]])

    # When the registry's factory builds the adapter
    adapter = registry.get("epic_haiku").factory(org, org.targets["epic_haiku"], services)

    # Then sections carry the site's ids, and it can call Epic with its own token
    body = json.loads(adapter.render(command()).body)
    assert [s["SectionID"] for s in body["Sections"]] == ["10164-2", "AP-1"]
    assert adapter.section_code("AP-1") == "51847-2"
    sid = "AMB-FACTORY-1"
    sim.begin_session(ORG, session_id=sid, deliver=False)
    sim.record(sid, synth_wav(1.0), chunk_seconds=1, status="Paused")
    audio, _ = adapter.fetch_chunk(sid, "R1", 1, 1, callback_url=sim.callback_url)
    assert audio[:4] == b"RIFF"
    # and it verifies Epic's inbound tokens for this org
    url = "https://engine.test/orgs/demo-epic/epic/ambient/RecordingAvailable"
    token = sim.make_inbound_token(url, "demo-epic")
    assert adapter.verify_inbound(f"Bearer {token}", url)["aud"] == url


def _jwk():
    from epic_support import public_jwk
    return public_jwk("RS384")
