"""Generated approval histories against the real engine (hypothesis, stateful).

Each history: one or two sessions in the same encounter at a site writing to a FHIR server
(us-core) and an HL7 MDM receiver, under one of two policies (approval required with
addenda; or staging unapproved drafts as preliminary, with replacements). Drafts are
staged, approved (twice, or from several threads at once), edited and re-approved in any
order; the worker's writes run in any order, some lost, some claimed by a worker that dies
holding the lease; the sweeper recovers. The adapters talk to the simulators over the wire.

After every history, once the queue has drained:
- at most one original per (session, target), and every correction is chained to the
  write before it in that lineage (one child per parent: a line, never a fork);
- the FHIR server holds exactly the documents the ledger says it created (an edit
  changes one in place), and the MDM receiver got each message (MSH-10) once;
- every write is terminal: succeeded, or failed / stale with its reason.
"""
from __future__ import annotations

import os
import threading
import uuid
from pathlib import Path

import pytest
import yaml
from dramatiq.brokers.stub import StubBroker
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.database import DirectoryBasedExampleDatabase
from hypothesis.stateful import (RuleBasedStateMachine, initialize, precondition, rule,
                                 run_state_machine_as_test)

from contract_tests.fhir_docref.sandbox import SIM_SCOPES, demo_keypair
from chartbridge.bootstrap import bootstrap
from chartbridge.core import usecases as uc
from chartbridge.core.clock import FrozenClock
from chartbridge.core.errors import ChartbridgeError
from chartbridge.core.models import (Consent, ConsentScope, Decision, Identifier,
                                     RecordingStatus, SessionSource, WriteKind, WriteStatus)
from chartbridge.jobs import Sweeper
from contract_tests.fhir_docref.sandbox import demo_target_settings as fhir_settings
from contract_tests.fhir_docref.simulator import FhirSimulator
from contract_tests.hl7_mdm.sandbox import demo_target_settings as mllp_settings
from contract_tests.hl7_mdm.simulator import HL7MDMSimulator
from tests.fakes import EchoTranscriber as Echo
from tests.fakes import OneSection, QueueJobs

HISTORIES = int(os.environ.get("CHARTBRIDGE_PROPERTY_EXAMPLES", "200"))
EXAMPLES_DB = DirectoryBasedExampleDatabase(str(Path(__file__).parent / "examples"))
REPO = Path(__file__).resolve().parents[2]
PATIENT, ENCOUNTER = "pat-1", "enc-1"
DR = Identifier(value="D1", type="EXTERNAL")
POLICIES = {"approve-append": ("required", "append"),
            "stage-replace": ("stage_preliminary", "replace")}








@pytest.fixture
def site(tmp_path, database_url):
    clock = FrozenClock()
    fhir = FhirSimulator("us-core", clock=lambda: clock.now().timestamp(), max_resources=100_000,
                         max_calls=1_000_000)
    mllp = HL7MDMSimulator()
    fhir.start()
    mllp.start()
    fhir.add_patient(PATIENT)
    fhir.add_encounter(ENCOUNTER, PATIENT)
    pem, jwk = demo_keypair()
    (tmp_path / "fhir.pem").write_text(pem)
    fhir.register_client("chartbridge-sim", jwk, scopes=SIM_SCOPES)
    base = yaml.safe_load((REPO / "config/orgs/demo-multi.yaml").read_text())
    for org, (approval, correction) in POLICIES.items():
        doc = dict(base, org=org, policy=dict(base["policy"], approval=approval,
                                              correction=correction))
        doc["targets"] = {"fhir_docref": fhir_settings(fhir, key_ref=f"file:{tmp_path / 'fhir.pem'}"),
                          "hl7_mdm": mllp_settings(mllp)}
        doc["drafting"] = {"generator": "rules", "template": "default"}
        (tmp_path / f"{org}.yaml").write_text(yaml.safe_dump(doc))
    engine = bootstrap(database_url=database_url, config_dir=tmp_path, clock=clock,
                       transcriber_factory=lambda org: Echo(),
                       generator_factory=lambda org: OneSection())
    yield engine, clock, fhir, mllp
    fhir.stop()
    mllp.stop()
    engine.db.dispose()


def test_generated_approval_histories_file_each_note_once(site):
    engine, clock, fhir, mllp = site
    store = engine.store

    class ApprovalHistory(RuleBasedStateMachine):
        @initialize(org=st.sampled_from(sorted(POLICIES)))
        def start(self, org):
            self.org = org
            self.jobs = QueueJobs(engine, StubBroker())
            self.sessions: list[str] = []

        def _newest(self, sid):
            return store.drafts(self.org, session_id=sid)[0]

        def _submit(self, draft_id):
            try:
                keys = engine.submit_approved(self.org, draft_id)
            except ChartbridgeError as exc:          # a refusal is fine; a 5xx-kind is not
                assert exc.http_status < 500, exc
                return
            for key in keys:
                self.jobs.enqueue("execute_write", self.org, key)

        @precondition(lambda self: len(self.sessions) < 2)
        @rule()
        def open_and_draft(self):
            s, _ = uc.open_session(
                store, clock, org_id=self.org, source=SessionSource.API,
                external_id=f"API-{uuid.uuid4().hex[:10]}", user=DR,
                patient_ids=[Identifier(value="Z1", type="MRN", system="urn:demo:mrn"),
                             Identifier(value=PATIENT, type="FHIR")],
                encounter_ids=[Identifier(value="300012345", type="CSN"),
                               Identifier(value=ENCOUNTER, type="FHIR")],
                allowed_sections=["10164-2"])
            for scope in ConsentScope.CAPTURE, ConsentScope.WRITE_BACK:
                store.set_consent(self.org, Consent(session_id=s.id, scope=scope, granted=True,
                                                    at=clock.now()))
            uc.announce_chunk(store, org_id=self.org, session=s, recording_id="R1", sequence=1,
                              version=1)
            store.store_audio(self.org, s.id, "R1", 1, b"cough for four days", "audio/wav")
            self.jobs.process_chunk.fn(self.org, s.id, "R1", 1)
            ready = uc.recording_available(store, clock, org_id=self.org, session=s,
                                           recording_id="R1", version=1, chunk_count=1,
                                           status=RecordingStatus.STOPPED)
            self.jobs.finish_version.fn(self.org, s.id, "R1", ready.version)
            self.sessions.append(s.id)

        @precondition(lambda self: self.sessions)
        @rule(data=st.data())
        def stage(self, data):
            sid = data.draw(st.sampled_from(self.sessions))
            draft, state = self._newest(sid)
            if state == "draft":
                self._submit(draft.id)

        @precondition(lambda self: self.sessions)
        @rule(data=st.data(), again=st.booleans())
        def approve(self, data, again):
            sid = data.draw(st.sampled_from(self.sessions))
            draft, state = self._newest(sid)
            if state == "draft":
                uc.decide(store, clock, org_id=self.org, draft_id=draft.id,
                          content_hash=draft.content_hash(), approver=DR, role="physician",
                          decision=Decision.APPROVED)
            if state in ("draft", "approved"):
                self._submit(draft.id)
                if again:                            # a double-click
                    self._submit(draft.id)

        @precondition(lambda self: self.sessions)
        @rule(data=st.data())
        def approve_from_five_threads(self, data):
            sid = data.draw(st.sampled_from(self.sessions))
            draft, state = self._newest(sid)
            if state != "approved":
                return
            threads = [threading.Thread(target=self._submit, args=(draft.id,)) for _ in range(5)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(30)

        @precondition(lambda self: self.sessions)
        @rule(data=st.data(), words=st.sampled_from(["Cough and fever.", "Cough, no fever."]))
        def edit(self, data, words):
            sid = data.draw(st.sampled_from(self.sessions))
            draft, _ = self._newest(sid)
            uc.edit_draft(store, clock, org_id=self.org, draft_id=draft.id,
                          section_code="10164-2", text=f"{words} v{draft.version + 1}",
                          editor="D1")

        @precondition(lambda self: self.jobs.pending)
        @rule(i=st.integers(0, 100))
        def run_write(self, i):
            job, args = self.jobs.pending.pop(i % len(self.jobs.pending))
            getattr(self.jobs, job).fn(*args)

        @precondition(lambda self: self.jobs.pending)
        @rule(i=st.integers(0, 100))
        def worker_dies_holding_the_lease(self, i):
            job, (org, key) = self.jobs.pending.pop(i % len(self.jobs.pending))
            try:
                engine.ledger._claim(engine.ledger._resolved(org, key), owner="dead-worker")
            except ChartbridgeError:
                pass                                 # finished, in flight, or waiting

        @rule()
        def sweep(self):
            clock.advance(400)                       # past any backoff and the 120 s lease
            Sweeper(self.jobs, stale_after_s=60).sweep_once()

        def teardown(self):
            if not self.sessions:
                return
            for _ in range(30):
                while self.jobs.pending:
                    job, args = self.jobs.pending.pop(0)
                    getattr(self.jobs, job).fn(*args)
                clock.advance(400)
                Sweeper(self.jobs, stale_after_s=60).sweep_once()
                if not self.jobs.pending:
                    break
            assert not self.jobs.pending, "writes still re-driven after 30 sweeps"
            for sid in self.sessions:
                self._check(sid)
            self._ehr_holds_what_the_ledger_says(
                [r for r in engine.ledger.list(self.org) if r.session_id in self.sessions])

        def _check(self, sid):
            rows = engine.ledger.list(self.org, session_id=sid)
            assert all(r.status in (WriteStatus.SUCCEEDED, WriteStatus.FAILED, WriteStatus.STALE)
                       for r in rows), [(r.target, r.kind, r.status, r.last_error) for r in rows]
            for target in ("fhir_docref", "hl7_mdm"):
                mine = [engine.ledger.command_of(self.org, r.key) for r in rows if r.target == target]
                originals = [c for c in mine if c.kind == WriteKind.CREATE]
                assert len(originals) <= 1, "a second original for one session and target"
                keys = {c.idempotency_key() for c in mine}
                parents = [c.parent_key for c in mine if c.kind != WriteKind.CREATE]
                assert all(p in keys for p in parents), "a correction of another lineage"
                assert len(parents) == len(set(parents)), "two corrections of one parent"
                failed = [r for r in rows if r.target == target and r.status != WriteStatus.SUCCEEDED]
                assert all(r.last_error for r in failed)

        def _ehr_holds_what_the_ledger_says(self, rows):
            fhir_rows = [r for r in rows if r.target == "fhir_docref"]
            filed = {r.key for r in fhir_rows if r.status == WriteStatus.SUCCEEDED
                     and r.kind != WriteKind.EDIT}
            creators = {r.key for r in fhir_rows if r.kind != WriteKind.EDIT}
            carrying: dict[str, int] = {}
            for doc in fhir.documents(PATIENT):
                made_by = {i.get("value") for i in doc.get("identifier") or []} & creators
                if not made_by:
                    continue                         # another history's document
                assert len(made_by) == 1, "one document carries two writes' identities"
                (k,) = made_by
                carrying[k] = carrying.get(k, 0) + 1
            assert carrying == {k: 1 for k in filed}, "the FHIR server's documents differ from the ledger"
            counts = mllp.received_counts()
            sent = [r.key for r in rows if r.target == "hl7_mdm" and r.attempts]
            ids = [(r.outcome or {}).get("control_id") for r in rows
                   if r.target == "hl7_mdm" and r.status == WriteStatus.SUCCEEDED]
            assert all(counts.get(c) == 1 for c in ids), "an MDM message arrived twice"
            assert len(ids) <= len(sent)

    run_state_machine_as_test(ApprovalHistory, settings=settings(
        max_examples=HISTORIES, stateful_step_count=20, deadline=None, database=EXAMPLES_DB,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much]))
