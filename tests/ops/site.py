"""An org writing to the FHIR simulator, with the real engine (ledger, use cases, actors)
and a queue the test drains itself (tests.fakes.QueueJobs): what the repair tests and the
console tests make stuck or failed states in, for real."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

from contract_tests.fhir_docref.sandbox import demo_target_settings as fhir_settings
from contract_tests.fhir_docref.sandbox import SIM_SCOPES, demo_keypair
from chartbridge.bootstrap import bootstrap
from chartbridge.core import usecases as uc
from chartbridge.core.models import (Consent, ConsentScope, Decision, Identifier,
                                     RecordingStatus, SessionSource)
from contract_tests.fhir_docref.simulator import FhirSimulator
from tests.fakes import EchoTranscriber, OneSection, QueueJobs

REPO = Path(__file__).resolve().parents[2]
PATIENT, ENCOUNTER = "pat-1", "enc-1"
DR = Identifier(value="D1", type="EXTERNAL")
HERE = Path(__file__).resolve().parent


class Site:
    def __init__(self, tmp_path: Path, database_url: str, orgs=("demo-ops",)) -> None:
        self.fhir = FhirSimulator("us-core")
        self.fhir.start()
        self.fhir.add_patient(PATIENT)
        self.fhir.add_encounter(ENCOUNTER, PATIENT)
        pem, jwk = demo_keypair()
        key = tmp_path / "fhir.pem"
        key.write_text(pem)
        self.fhir.register_client("chartbridge-sim", jwk, scopes=SIM_SCOPES)
        self.config_dir = tmp_path / "orgs"
        self.config_dir.mkdir(exist_ok=True)
        for org in orgs:
            doc = yaml.safe_load((REPO / "config/orgs/demo-multi.yaml").read_text())
            doc["org"], doc["name"] = org, f"Clinic {org}"
            doc["targets"] = {"fhir_docref": fhir_settings(self.fhir, key_ref=f"file:{key}")}
            doc["drafting"] = {"generator": "rules", "template": "default"}
            (self.config_dir / f"{org}.yaml").write_text(yaml.safe_dump(doc))
        self.database_url = database_url
        self.engine = bootstrap(database_url=database_url, config_dir=self.config_dir,
                                transcriber_factory=lambda org: EchoTranscriber(),
                                generator_factory=lambda org: OneSection())
        self.jobs = QueueJobs(self.engine, _broker())

    def close(self) -> None:
        self.fhir.stop()
        self.engine.db.dispose()

    # -- driving --------------------------------------------------------------------------
    def drain(self, limit: int = 50) -> list[str]:
        """Run what was enqueued, in order (and what that enqueues), like a worker."""
        ran = []
        while self.jobs.pending and len(ran) < limit:
            job, args = self.jobs.pending.pop(0)
            getattr(self.jobs, job).fn(*args)
            ran.append(job)
        return ran

    def open_session(self, org: str, words: str = "cough for four days"):
        s, _ = uc.open_session(
            self.engine.store, self.engine.clock, org_id=org, source=SessionSource.API,
            external_id=f"API-{time.monotonic_ns()}", user=DR,
            patient_ids=[Identifier(value="Z1", type="MRN", system="urn:demo:mrn"),
                         Identifier(value=PATIENT, type="FHIR")],
            encounter_ids=[Identifier(value="300012345", type="CSN"),
                           Identifier(value=ENCOUNTER, type="FHIR")],
            allowed_sections=["10164-2"])
        for scope in ConsentScope.CAPTURE, ConsentScope.WRITE_BACK:
            self.engine.store.set_consent(org, Consent(session_id=s.id, scope=scope,
                                                       granted=True, at=self.engine.clock.now()))
        uc.announce_chunk(self.engine.store, org_id=org, session=s, recording_id="R1",
                          sequence=1, version=1)
        self.engine.store.store_audio(org, s.id, "R1", 1, words.encode(), "audio/wav")
        return s

    def stop_recording(self, org: str, session):
        return uc.recording_available(self.engine.store, self.engine.clock, org_id=org,
                                      session=session, recording_id="R1", version=1,
                                      chunk_count=1, status=RecordingStatus.STOPPED)

    def drafted(self, org: str):
        s = self.open_session(org)
        self.jobs.process_chunk.fn(org, s.id, "R1", 1)
        ready = self.stop_recording(org, s)
        self.jobs.finish_version.fn(org, s.id, "R1", ready.version)
        (draft, _), = self.engine.store.drafts(org, session_id=s.id)
        return s, draft

    def approve(self, org: str, draft) -> list[str]:
        uc.decide(self.engine.store, self.engine.clock, org_id=org, draft_id=draft.id,
                  content_hash=draft.content_hash(), approver=DR, approver_name="Dr. Demo",
                  role="physician", decision=Decision.APPROVED)
        self.jobs.pending.clear()
        keys = self.engine.submit_approved(org, draft.id)
        self.jobs.pending.clear()          # the test drives the writes itself
        return keys

    def write_with_fault(self, org: str, status: int | None = None, *,
                         kind: str | None = None, max_attempts: int | None = None) -> str:
        """A drafted, approved note whose one write meets one injected FHIR fault on its
        transaction (`max_attempts`: the ledger's budget for that attempt). Returns its key."""
        _, draft = self.drafted(org)
        self.fhir.faults.add("transaction", status, kind=kind, times=1)
        (key,) = self.approve(org, draft)
        budget = self.engine.ledger.max_attempts
        self.engine.ledger.max_attempts = max_attempts or budget
        try:
            self.jobs.execute_write.fn(org, key)
        finally:
            self.engine.ledger.max_attempts = budget
        return key

    def documents(self) -> list[dict]:
        return self.fhir.documents(PATIENT)

    # -- a worker killed mid-job ----------------------------------------------------------
    def kill_worker_during(self, tmp_path: Path, job: str, org: str, *args) -> None:
        """Run `job` in a separate worker process that hangs inside it (transcribing a
        chunk, or drafting a version), then SIGKILL that process: the database is left as
        a killed worker leaves it."""
        marker = tmp_path / f"hung-{time.monotonic_ns()}"
        env = dict(os.environ, CB_DB=self.database_url, CB_CONFIG=str(self.config_dir),
                   CB_MARKER=str(marker), CB_JOB=job, CB_ARGS=" ".join(map(str, (org, *args))))
        proc = subprocess.Popen([sys.executable, str(HERE / "hung_worker.py")], env=env,
                                cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 60
            while not marker.exists():
                if proc.poll() is not None:
                    raise AssertionError(proc.stdout.read().decode()[-3000:])
                assert time.monotonic() < deadline, "the worker never reached the job"
                time.sleep(0.05)
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)


def _broker():
    from dramatiq.brokers.stub import StubBroker
    return StubBroker()
