"""A second approved version of a note reaches the EHR as a correction of the first
(here an HL7 T06 addendum pointing at the original's TXA-12), never a second original.
A correction approved before its original was sent waits for it: tests/app/test_exactly_once.py."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from dramatiq.brokers.stub import StubBroker

from chartbridge.bootstrap import bootstrap
from chartbridge.core import usecases as uc
from chartbridge.core.models import (Consent, ConsentScope, Decision, Identifier,
                                     RecordingStatus, SessionSource, WriteKind, WriteStatus)
from chartbridge.jobs import Jobs
from contract_tests.hl7_mdm.sandbox import demo_target_settings
from contract_tests.hl7_mdm.simulator import HL7MDMSimulator
from tests.fakes import EchoTranscriber as Echo
from tests.fakes import OneSection

REPO = Path(__file__).resolve().parents[2]
ORG = "demo-multi"






@pytest.fixture
def site(tmp_path, database_url):
    sim = HL7MDMSimulator()
    sim.start()
    doc = yaml.safe_load((REPO / "config/orgs/demo-multi.yaml").read_text())
    doc["targets"] = {"hl7_mdm": demo_target_settings(sim)}
    doc["policy"]["correction"] = "append"
    (tmp_path / f"{ORG}.yaml").write_text(yaml.safe_dump(doc))
    engine = bootstrap(database_url=database_url, config_dir=tmp_path,
                       transcriber_factory=lambda org: Echo(), generator_factory=lambda org: OneSection())
    jobs = Jobs(engine, StubBroker())          # actors run inline below: no timing involved
    yield engine, jobs, sim
    sim.stop()
    engine.db.dispose()


def _approved_draft(engine, jobs):
    s, _ = uc.open_session(engine.store, engine.clock, org_id=ORG, source=SessionSource.API,
                           external_id="API-1", user=Identifier(value="D1", type="EXTERNAL"),
                           patient_ids=[Identifier(value="Z1", type="MRN", system="urn:demo:mrn")],
                           encounter_ids=[Identifier(value="300012345", type="CSN")],
                           allowed_sections=["10164-2"])
    for scope in ConsentScope.CAPTURE, ConsentScope.WRITE_BACK:
        engine.store.set_consent(ORG, Consent(session_id=s.id, scope=scope, granted=True, at=engine.clock.now()))
    uc.announce_chunk(engine.store, org_id=ORG, session=s, recording_id="R1", sequence=1, version=1)
    engine.store.store_audio(ORG, s.id, "R1", 1, b"cough for four days", "audio/wav")
    uc.announce_version(engine.store, engine.clock, org_id=ORG, session=s, recording_id="R1",
                        version=1, chunk_count=1, status=RecordingStatus.STOPPED)
    jobs.process_chunk.fn(ORG, s.id, "R1", 1)
    jobs.finish_version.fn(ORG, s.id, "R1", 1)
    (draft, _), = engine.store.drafts(ORG, session_id=s.id)
    return s, draft


def _approve(engine, draft):
    uc.decide(engine.store, engine.clock, org_id=ORG, draft_id=draft.id, content_hash=draft.content_hash(),
              approver=Identifier(value="D1", type="EXTERNAL"), approver_name="Dr. Demo",
              role="physician", decision=Decision.APPROVED)


def test_second_approved_version_is_an_addendum_to_the_first(site):
    engine, jobs, sim = site
    session, v1 = _approved_draft(engine, jobs)
    _approve(engine, v1)
    (key1,) = engine.submit_approved(ORG, v1.id)
    jobs.execute_write.fn(ORG, key1)
    first = engine.ledger.get(ORG, key1)
    assert first.status == WriteStatus.SUCCEEDED and first.kind == WriteKind.CREATE
    # When the clinician corrects the note and approves the new version
    v2 = uc.edit_draft(engine.store, engine.clock, org_id=ORG, draft_id=v1.id, section_code="10164-2",
                       text="Cough and fever for four days.", editor="D1")
    _approve(engine, v2)
    (key2,) = engine.submit_approved(ORG, v2.id)
    jobs.execute_write.fn(ORG, key2)
    second = engine.ledger.get(ORG, key2)
    # Then it reached the receiver as an addendum to the original, not a second original
    assert second.status == WriteStatus.SUCCEEDED and second.kind == WriteKind.APPEND
    docs = sim.documents()
    assert set(docs) == {first.external_id, second.external_id}
    assert docs[second.external_id].get("parent") == first.external_id
