"""A note is filed once and never written over an edit, whatever is repeated: the same
approval submitted again or by many threads at once, a second session in the same
encounter, an edit made at the EHR between staging and approval, a correction approved
before the original was sent. The engine runs for real (ledger, use cases, jobs, adapters)
against the FHIR and MLLP simulators; the actors run inline, so no timing is involved."""
from __future__ import annotations

import threading
from pathlib import Path

import pytest
import yaml
from dramatiq.brokers.stub import StubBroker

from contract_tests.fhir_docref.sandbox import SIM_SCOPES, demo_keypair
from chartbridge.bootstrap import bootstrap
from chartbridge.core import usecases as uc
from chartbridge.core.models import (Consent, ConsentScope, Decision, Identifier,
                                     RecordingStatus, SessionSource, WriteKind, WriteStatus)
from chartbridge.jobs import Jobs
from contract_tests.fhir_docref.sandbox import demo_target_settings as fhir_settings
from contract_tests.fhir_docref.simulator import FhirSimulator
from contract_tests.hl7_mdm.sandbox import demo_target_settings as mllp_settings
from contract_tests.hl7_mdm.simulator import HL7MDMSimulator
from tests.fakes import EchoTranscriber as Echo
from tests.fakes import OneSection

REPO = Path(__file__).resolve().parents[2]
ORG = "demo-multi"
PATIENT, ENCOUNTER = "pat-1", "enc-1"
DR = Identifier(value="D1", type="EXTERNAL")






def _site(tmp_path, database_url, *, approval="required", correction="append"):
    fhir, mllp = FhirSimulator("us-core"), HL7MDMSimulator()
    fhir.start()
    mllp.start()
    fhir.add_patient(PATIENT)
    fhir.add_encounter(ENCOUNTER, PATIENT)
    pem, jwk = demo_keypair()
    key = tmp_path / "fhir.pem"
    key.write_text(pem)
    fhir.register_client("chartbridge-sim", jwk, scopes=SIM_SCOPES)
    doc = yaml.safe_load((REPO / "config/orgs/demo-multi.yaml").read_text())
    doc["targets"] = {"fhir_docref": fhir_settings(fhir, key_ref=f"file:{key}"),
                      "hl7_mdm": mllp_settings(mllp)}
    doc["policy"].update(approval=approval, correction=correction)
    doc["drafting"] = {"generator": "rules", "template": "default"}
    (tmp_path / f"{ORG}.yaml").write_text(yaml.safe_dump(doc))
    engine = bootstrap(database_url=database_url, config_dir=tmp_path,
                       transcriber_factory=lambda org: Echo(),
                       generator_factory=lambda org: OneSection())
    return engine, Jobs(engine, StubBroker()), fhir, mllp


@pytest.fixture
def site(tmp_path, database_url):
    engine, jobs, fhir, mllp = _site(tmp_path, database_url)
    yield engine, jobs, fhir, mllp
    fhir.stop()
    mllp.stop()
    engine.db.dispose()


@pytest.fixture
def staging_site(tmp_path, database_url):
    engine, jobs, fhir, mllp = _site(tmp_path, database_url, approval="stage_preliminary")
    yield engine, jobs, fhir, mllp
    fhir.stop()
    mllp.stop()
    engine.db.dispose()


def _drafted(engine, jobs, external_id="API-1", words="cough for four days"):
    """A session in the one encounter, transcribed and drafted."""
    s, _ = uc.open_session(engine.store, engine.clock, org_id=ORG, source=SessionSource.API,
                           external_id=external_id, user=DR,
                           patient_ids=[Identifier(value="Z1", type="MRN", system="urn:demo:mrn"),
                                        Identifier(value=PATIENT, type="FHIR")],
                           encounter_ids=[Identifier(value="300012345", type="CSN"),
                                          Identifier(value=ENCOUNTER, type="FHIR")],
                           allowed_sections=["10164-2"])
    for scope in ConsentScope.CAPTURE, ConsentScope.WRITE_BACK:
        engine.store.set_consent(ORG, Consent(session_id=s.id, scope=scope, granted=True,
                                              at=engine.clock.now()))
    uc.announce_chunk(engine.store, org_id=ORG, session=s, recording_id="R1", sequence=1, version=1)
    engine.store.store_audio(ORG, s.id, "R1", 1, words.encode(), "audio/wav")
    jobs.process_chunk.fn(ORG, s.id, "R1", 1)
    ready = uc.recording_available(engine.store, engine.clock, org_id=ORG, session=s,
                                   recording_id="R1", version=1, chunk_count=1,
                                   status=RecordingStatus.STOPPED)
    jobs.finish_version.fn(ORG, s.id, "R1", ready.version)
    (draft, _), = engine.store.drafts(ORG, session_id=s.id)
    return s, draft


def _approve(engine, draft):
    uc.decide(engine.store, engine.clock, org_id=ORG, draft_id=draft.id,
              content_hash=draft.content_hash(), approver=DR, approver_name="Dr. Demo",
              role="physician", decision=Decision.APPROVED)


def _run(engine, jobs, keys):
    for key in keys:
        jobs.execute_write.fn(ORG, key)
    return [engine.ledger.get(ORG, k) for k in keys]


def test_the_same_approval_submitted_again_after_it_was_written_files_nothing_more(site):
    engine, jobs, fhir, mllp = site
    _, draft = _drafted(engine, jobs)
    _approve(engine, draft)
    keys = engine.submit_approved(ORG, draft.id)
    first = _run(engine, jobs, keys)
    assert all(r.status == WriteStatus.SUCCEEDED and r.kind == WriteKind.CREATE for r in first)
    # When the same approval is submitted again (a double-click, a retried request)
    again = engine.submit_approved(ORG, draft.id)
    _run(engine, jobs, again)
    # Then it is the same writes, and each target holds one note: no "append" copy
    assert again == keys
    assert len(fhir.documents(PATIENT)) == 1
    assert len(mllp.documents()) == 1
    assert {r.kind for r in engine.ledger.list(ORG)} == {WriteKind.CREATE}


def test_fifty_threads_submitting_and_sending_one_approval_file_one_note_per_target(site):
    engine, jobs, fhir, mllp = site
    _, draft = _drafted(engine, jobs)
    _approve(engine, draft)
    errors, keys = [], []
    barrier = threading.Barrier(50)

    def click():
        try:
            barrier.wait(10)
            mine = engine.submit_approved(ORG, draft.id)
            keys.append(tuple(mine))
            for key in mine:
                jobs.execute_write.fn(ORG, key)
        except Exception as exc:  # noqa: BLE001 - any failure is the test's finding
            errors.append(exc)

    threads = [threading.Thread(target=click) for _ in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    assert len(set(keys)) == 1
    for key in keys[0]:                # whatever was left in flight is driven to its end
        jobs.execute_write.fn(ORG, key)
    assert len(fhir.documents(PATIENT)) == 1
    assert len(mllp.documents()) == 1
    rows = engine.ledger.list(ORG)
    assert len(rows) == 2 and {r.kind for r in rows} == {WriteKind.CREATE}
    assert all(r.status == WriteStatus.SUCCEEDED for r in rows)


def test_an_edit_made_at_the_ehr_after_staging_is_never_overwritten(staging_site):
    engine, jobs, fhir, _ = staging_site
    _, draft = _drafted(engine, jobs)
    # Given the unapproved draft staged as a preliminary DocumentReference (version 1)
    staged = _run(engine, jobs, engine.submit_approved(ORG, draft.id))
    fhir_row = next(r for r in staged if r.target == "fhir_docref")
    assert fhir_row.status == WriteStatus.SUCCEEDED and fhir_row.external_version == "1"
    doc_id = fhir_row.external_id.split("/")[1]
    # And a clinician edits that document in the EHR (version 2)
    edited = fhir.ehr_update("DocumentReference", doc_id, {"description": "edited at the EHR"})
    assert edited["meta"]["versionId"] == "2"
    # When the draft is approved and the approved note goes out as an edit of the staged one
    _approve(engine, draft)
    rows = _run(engine, jobs, engine.submit_approved(ORG, draft.id))
    fhir_edit = next(r for r in rows if r.target == "fhir_docref")
    # Then the update carried the version the engine wrote, the EHR refused it (412), and the
    # write is stale with its reason: the clinician's edit is what the EHR still holds
    assert fhir_edit.kind == WriteKind.EDIT
    assert fhir_edit.status == WriteStatus.STALE, fhir_edit.last_error
    assert fhir_edit.outcome.get("status") == 412
    current = fhir.get("DocumentReference", doc_id)
    assert current["meta"]["versionId"] == "2"
    assert current["description"] == "edited at the EHR"
    assert len(fhir.documents(PATIENT)) == 1


def test_a_second_session_in_the_same_encounter_gets_its_own_notes(site):
    engine, jobs, fhir, mllp = site
    _, first = _drafted(engine, jobs, "API-1", "cough for four days")
    _, second = _drafted(engine, jobs, "API-2", "follow up on the rash")
    _approve(engine, first)
    _approve(engine, second)
    rows = _run(engine, jobs, engine.submit_approved(ORG, first.id)) + \
        _run(engine, jobs, engine.submit_approved(ORG, second.id))
    # Both sessions' notes are originals, each filed once, none refused as a key reuse
    assert [(r.status, r.kind) for r in rows] == [(WriteStatus.SUCCEEDED, WriteKind.CREATE)] * 4
    assert len(fhir.documents(PATIENT)) == 2
    assert len(mllp.documents()) == 2


def test_a_correction_approved_before_the_original_was_sent_waits_then_chains_to_it(site):
    engine, jobs, fhir, mllp = site
    _, v1 = _drafted(engine, jobs)
    _approve(engine, v1)
    keys1 = engine.submit_approved(ORG, v1.id)                 # recorded, not yet sent
    v2 = uc.edit_draft(engine.store, engine.clock, org_id=ORG, draft_id=v1.id,
                       section_code="10164-2", text="Cough and fever for four days.", editor="D1")
    _approve(engine, v2)
    keys2 = engine.submit_approved(ORG, v2.id)
    # The correction's kind and parent were decided when it was recorded
    corrections = [engine.ledger.command_of(ORG, k) for k in keys2]
    assert {c.kind for c in corrections} == {WriteKind.APPEND}
    assert [c.parent_key for c in corrections] == keys1
    # Sent first, it waits visibly for the original instead of becoming a second original
    for k in keys2:
        jobs.execute_write.fn(ORG, k)
    waiting = [engine.ledger.get(ORG, k) for k in keys2]
    assert all(r.status == WriteStatus.PENDING and r.last_error_class == "WaitingForParent"
               for r in waiting)
    assert fhir.documents(PATIENT) == [] and mllp.documents() == {}
    # Once the original is written the correction follows, chained to it
    originals = _run(engine, jobs, keys1)
    for k in keys2:
        jobs.execute_write.fn(ORG, k)
    fixed = [engine.ledger.get(ORG, k) for k in keys2]
    assert all(r.status == WriteStatus.SUCCEEDED for r in fixed)
    mdm_original = next(r for r in originals if r.target == "hl7_mdm")
    mdm_fix = next(r for r in fixed if r.target == "hl7_mdm")
    assert mllp.documents()[mdm_fix.external_id].get("parent") == mdm_original.external_id
    fhir_original = next(r for r in originals if r.target == "fhir_docref")
    fhir_fix = next(r for r in fixed if r.target == "fhir_docref")
    fix_doc = fhir.get("DocumentReference", fhir_fix.external_id.split("/")[1])
    assert fix_doc["relatesTo"][0]["code"] == "appends"
    assert fix_doc["relatesTo"][0]["target"]["reference"] == fhir_original.external_id
