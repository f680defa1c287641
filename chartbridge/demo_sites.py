"""The demo's second organization: a non-Epic site (FHIR + athenaOne + HL7 MDM targets).

Its session starts through the core use cases (as a capture client would through the
API), uploads the same visit audio as 10 s chunks, is drafted by the worker, approved by a
named demo clinician, and written to every target the org has configured — each against
its vendor simulator on a loopback port.
"""
from __future__ import annotations

import io
import os
import time
import wave
from contextlib import ExitStack, nullcontext
from pathlib import Path
from typing import Callable

import yaml

from chartbridge.config.loader import EXAMPLE_ORGS
from chartbridge.core import usecases as uc
from chartbridge.core.errors import ChartbridgeError
from chartbridge.core.models import (ChunkState, Consent, ConsentScope, Decision, Identifier,
                                     RecordingStatus, SessionSource, VersionState, WriteStatus)

ORG = "demo-multi"
CLINICIAN = Identifier(value="DEMO-DR-1", type="EXTERNAL")
CLINICIAN_NAME = "Dr. Dana Demo (demo clinician)"
FHIR_PATIENT, FHIR_ENCOUNTER, ATHENA_PATIENT = "demo-pat-1", "demo-enc-1", "1"


def _chunks(wav: bytes, seconds: float) -> list[tuple[bytes, int]]:
    with wave.open(io.BytesIO(wav)) as src:
        params = src.getparams()
        per = int(params.framerate * seconds)
        out = []
        while True:
            frames = src.readframes(per)
            if not frames:
                break
            buf = io.BytesIO()
            with wave.open(buf, "wb") as dst:
                dst.setparams(params)
                dst.writeframes(frames)
            n = len(frames) // (params.sampwidth * params.nchannels)
            out.append((buf.getvalue(), int(n * 1000 / params.framerate)))
    return out


def _start_simulators(stack: ExitStack, workdir: Path,
                      sims: dict | None = None) -> dict[str, dict]:
    """Start each target's simulator and return the org's `targets` block for them (and
    each simulator in `sims`, by target name, when given)."""
    targets: dict[str, dict] = {}
    sims = {} if sims is None else sims
    from contract_tests.athenaone.sandbox import demo_target_settings as athena_settings
    from contract_tests.athenaone.simulator import AthenaSimulator
    athena = AthenaSimulator()
    athena.start()
    stack.callback(athena.stop)
    os.environ.setdefault("ATHENA_CLIENT_SECRET", "sim-secret")   # the simulator's own credential
    targets["athenaone"] = athena_settings(athena)
    sims["athenaone"] = athena

    from contract_tests.hl7_mdm.sandbox import demo_target_settings as mllp_settings
    from contract_tests.hl7_mdm.simulator import HL7MDMSimulator
    mllp = HL7MDMSimulator()
    mllp.start()
    stack.callback(mllp.stop)
    targets["hl7_mdm"] = mllp_settings(mllp)
    sims["hl7_mdm"] = mllp

    try:
        from contract_tests.fhir_docref.sandbox import demo_target_settings as fhir_settings
    except ImportError:
        fhir_settings = None
    if fhir_settings is not None:
        from contract_tests.fhir_docref.simulator import FhirSimulator
        fhir = FhirSimulator("us-core")
        fhir.start()
        stack.callback(fhir.stop)
        fhir.add_patient(FHIR_PATIENT)
        fhir.add_encounter(FHIR_ENCOUNTER, FHIR_PATIENT)
        from contract_tests.fhir_docref.sandbox import SIM_SCOPES, demo_keypair
        pem, jwk = demo_keypair()
        key_file = workdir / "keys" / "fhir-backend.pem"
        key_file.parent.mkdir(parents=True, exist_ok=True)
        key_file.write_text(pem)
        key_file.chmod(0o600)
        fhir.register_client("chartbridge-sim", jwk, scopes=SIM_SCOPES)
        targets["fhir_docref"] = fhir_settings(fhir, key_ref=f"file:{key_file}")
        sims["fhir_docref"] = fhir
    return targets


def write_config(config_dir: Path, targets: dict[str, dict]) -> None:
    doc = yaml.safe_load((EXAMPLE_ORGS / "demo-multi.yaml").read_text())
    doc["targets"] = targets
    doc["drafting"] = {"generator": "rules", "template": "default"}   # no LLM server in the demo
    (config_dir / f"{ORG}.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))


AWAITING = "awaiting review"


def run_multi_site(epic_stack, wav: bytes, *, chunk_seconds: float,
                   progress: Callable[[str], None], timeout: float,
                   auto_approve: bool = True, keep_up: ExitStack | None = None) -> dict:
    """The second site's visit. With `auto_approve` the demo clinician approves the draft
    and the writes are awaited; without it the draft is left staged for a person on the
    review page, and its simulators live as long as `keep_up` (the caller's ExitStack)."""
    engine, jobs = epic_stack.engine, epic_stack.rt.jobs
    store = engine.store
    with (nullcontext(keep_up) if keep_up is not None else ExitStack()) as sims:
        targets = _start_simulators(sims, epic_stack.workdir)
        write_config(epic_stack.workdir / "orgs", targets)
        progress(f"second site {ORG}: targets {', '.join(targets)} (each against its simulator)")
        session, _ = uc.open_session(
            store, engine.clock, org_id=ORG, source=SessionSource.API, external_id="API-DEMO-0001",
            user=CLINICIAN,
            patient_ids=[Identifier(value="Z4481", type="MRN", system="urn:demo:mrn"),
                         Identifier(value=FHIR_PATIENT, type="FHIR"),
                         Identifier(value=ATHENA_PATIENT, type="athena-patient")],
            encounter_ids=[Identifier(value="300012345", type="CSN"),
                           Identifier(value=FHIR_ENCOUNTER, type="FHIR")],
            allowed_sections=engine.org(ORG).allowed_sections)
        for scope in (ConsentScope.CAPTURE, ConsentScope.WRITE_BACK):     # the org requires both
            store.set_consent(ORG, Consent(session_id=session.id, scope=scope, granted=True,
                                           recorded_by=CLINICIAN.value, at=engine.clock.now()))
        pieces = _chunks(wav, chunk_seconds)
        report = _chunk_reporter(store, session, len(pieces), progress)
        for seq, (audio, ms) in enumerate(pieces, start=1):
            uc.announce_chunk(store, org_id=ORG, session=session, recording_id="R1",
                              sequence=seq, version=1, duration_ms=ms)
            store.store_audio(ORG, session.id, "R1", seq, audio, "audio/wav")
            jobs.enqueue("process_chunk", ORG, session.id, "R1", seq)
        ready = uc.recording_available(store, engine.clock, org_id=ORG, session=session,
                                       recording_id="R1", version=1, chunk_count=len(pieces),
                                       status=RecordingStatus.STOPPED)
        if ready is not None:
            jobs.enqueue("finish_version", ORG, session.id, "R1", ready.version)
        _wait(lambda: store.recordings(ORG, session.id)[0].state in (VersionState.DONE, VersionState.FAILED),
              timeout, "the second site's draft", every=report)
        drafts = store.drafts(ORG, session_id=session.id)
        if not drafts:
            raise ChartbridgeError("demo: the second site produced no draft: "
                                   f"{store.recordings(ORG, session.id)[0].state}")
        draft = drafts[0][0]
        result = {"session_id": session.id, "draft_id": draft.id, "draft_version": draft.version,
                  "sections": {s.code: s.text for s in draft.sections}}
        if not auto_approve:
            progress(f"draft v{draft.version} ({len(draft.sections)} sections) waits for a person "
                     "on the review page (no writes until it is approved)")
            return {**result, "ledger": [],
                    "targets": {name: {"status": AWAITING, "external_id": None} for name in targets}}
        progress(f"{CLINICIAN_NAME} approves draft v{draft.version} ({len(draft.sections)} sections)")
        uc.decide(store, engine.clock, org_id=ORG, draft_id=draft.id, content_hash=draft.content_hash(),
                  approver=CLINICIAN, approver_name=CLINICIAN_NAME, role="attending physician",
                  decision=Decision.APPROVED)
        keys = engine.submit_approved(ORG, draft.id)

        def settled() -> bool:
            rows = [engine.ledger.get(ORG, k) for k in keys]
            return all(r.status in (WriteStatus.SUCCEEDED, WriteStatus.FAILED, WriteStatus.STALE,
                                    WriteStatus.NEEDS_RECONCILIATION) for r in rows)
        _wait(settled, timeout, "the second site's writes")
        rows = [engine.ledger.get(ORG, k) for k in keys]
        for r in rows:
            progress(f"write {r.target}: {r.status.value} {r.external_id or r.last_error or ''}")
        return {**result, **written(rows)}


def written(rows) -> dict:
    """The demo's view of the second site's ledger rows: per target, written or not."""
    return {"ledger": [{"key": r.key, "target": r.target, "kind": r.kind, "status": r.status.value,
                        "external_id": r.external_id, "attempts": r.attempts,
                        "detail": r.outcome} for r in rows],
            "targets": {r.target: {"status": "written" if r.status == WriteStatus.SUCCEEDED
                                   else r.status.value, "external_id": r.external_id,
                                   **({"ack": r.outcome.get("ack")} if r.outcome and r.outcome.get("ack") else {}),
                                   **({"error": r.last_error} if r.last_error else {})}
                        for r in rows}}


def _chunk_reporter(store, session, total: int, progress: Callable[[str], None]) -> Callable[[], None]:
    """A progress line each time another of the second site's chunks is transcribed."""
    seen = [0]

    def report() -> None:
        done = sum(c.state == ChunkState.TRANSCRIBED for c in store.chunks(ORG, session.id))
        if done != seen[0]:
            seen[0] = done
            progress(f"{ORG} chunk {done}/{total} transcribed")
    return report


def _wait(predicate, timeout: float, what: str, every: Callable[[], None] = lambda: None) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        every()
        if time.monotonic() > deadline:
            raise ChartbridgeError(f"demo: timed out waiting for {what}")
        time.sleep(0.05)
