"""The demo's second organization: a non-Epic site (FHIR + athenaOne + HL7 MDM targets).

Everything it does goes over the capture API (chartbridge/api/), as any capture client's
would: a client registered in the org file (its public JWKS by file) takes a token, opens
the session, uploads the same visit audio as 10 s chunks, stops the recording, polls the
draft, has it approved by a named demo clinician (their ID token from the demo's identity
provider, chartbridge/demo_idp.py) and polls the writes to every target the org has
configured — each against its vendor simulator on a loopback port.
"""
from __future__ import annotations

import io
import os
import wave
from contextlib import ExitStack, nullcontext
from pathlib import Path
from typing import Callable

import yaml

from chartbridge.config.loader import EXAMPLE_ORGS
from chartbridge.core.errors import ChartbridgeError
from chartbridge.core.models import Identifier, WriteStatus

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


CAPTURE_CLIENT = "demo-capture-app"


def write_config(config_dir: Path, targets: dict[str, dict], *, sign_in: dict | None = None,
                 api: dict | None = None) -> None:
    doc = yaml.safe_load((EXAMPLE_ORGS / "demo-multi.yaml").read_text())
    doc["targets"] = targets
    doc["drafting"] = {"generator": "rules", "template": "default"}   # no LLM server in the demo
    if sign_in:
        doc["sign_in"] = sign_in
    if api:
        doc["api"] = api
    (config_dir / f"{ORG}.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))


def _capture_client(epic_stack):
    """The demo's capture client: a fresh key pair, its public JWKS by file in the org's
    `api.clients`."""
    import json

    from chartbridge.api.client import CaptureClient, new_client_key

    key, jwks = new_client_key()
    path = epic_stack.workdir / "keys" / f"{CAPTURE_CLIENT}.jwks.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(jwks))
    block = {"clients": [{"client_id": CAPTURE_CLIENT, "jwks": f"file:{path}",
                          "scopes": ["capture", "read", "approve"]}], "token_ttl_s": 300}
    return CaptureClient(epic_stack.engine_url, ORG, CAPTURE_CLIENT, key), block


AWAITING = "awaiting review"


def run_multi_site(epic_stack, wav: bytes, *, chunk_seconds: float,
                   progress: Callable[[str], None], timeout: float,
                   auto_approve: bool = True, keep_up: ExitStack | None = None) -> dict:
    """The second site's visit. With `auto_approve` the demo clinician approves the draft
    and the writes are awaited; without it the draft is left staged for a person on the
    review page, and its simulators live as long as `keep_up` (the caller's ExitStack)."""
    engine = epic_stack.engine
    with (nullcontext(keep_up) if keep_up is not None else ExitStack()) as sims:
        targets = _start_simulators(sims, epic_stack.workdir)
        from chartbridge.demo_idp import DemoIdP
        idp = DemoIdP(reviewer="DEMO-DR-2").start()
        sims.callback(idp.stop)
        client, api_block = _capture_client(epic_stack)
        write_config(epic_stack.workdir / "orgs", targets, sign_in=idp.sign_in_block(),
                     api=api_block)
        progress(f"second site {ORG}: targets {', '.join(targets)} (each against its simulator)")
        progress(f"{ORG} drives the capture API {client.api} as client {CAPTURE_CLIENT}")
        try:
            return _api_visit(engine, client, idp, wav, chunk_seconds=chunk_seconds,
                              progress=progress, timeout=timeout, auto_approve=auto_approve,
                              targets=targets)
        finally:
            client.http.close()


def _answer(resp, what: str) -> dict:
    if resp.status_code >= 300:
        raise ChartbridgeError(f"demo: {what} answered {resp.status_code}: "
                               f"{resp.json().get('detail', '') if resp.content else ''}")
    return resp.json()


def _api_visit(engine, client, idp, wav: bytes, *, chunk_seconds: float,
               progress: Callable[[str], None], timeout: float, auto_approve: bool,
               targets: dict) -> dict:
    """The visit, over HTTP only: session, chunks, stop, draft, approval, writes."""
    def ident(i: Identifier) -> dict:
        return i.model_dump(exclude_none=True)

    session = _answer(client.post("/sessions", {
        "external_id": "API-DEMO-0001", "user": ident(CLINICIAN),
        "patient_ids": [{"value": "Z4481", "type": "MRN", "system": "urn:demo:mrn"},
                        {"value": FHIR_PATIENT, "type": "FHIR"},
                        {"value": ATHENA_PATIENT, "type": "athena-patient"}],
        "encounter_ids": [{"value": "300012345", "type": "CSN"},
                          {"value": FHIR_ENCOUNTER, "type": "FHIR"}],
        "consent": {"capture": True, "write_back": True}}), "POST /sessions")   # both required
    sid = session["id"]
    pieces = _chunks(wav, chunk_seconds)
    for seq, (audio, _ms) in enumerate(pieces, start=1):
        _answer(client.put_chunk(sid, 1, seq, audio), f"PUT chunk {seq}")
    _answer(client.post(f"/sessions/{sid}/recordings/1",
                        {"status": "Stopped", "chunk_count": len(pieces)}), "POST recording")
    seen = [0]

    def drafted(body: dict) -> bool:
        done = sum(c["state"] == "transcribed" for c in body["chunks"])
        if done != seen[0]:
            seen[0] = done
            progress(f"{ORG} chunk {done}/{len(pieces)} transcribed")
        failed = [c for c in body["chunks"] if c["state"] == "failed"]
        if failed:
            raise ChartbridgeError(f"demo: chunk {failed[0]['sequence']} failed: {failed[0]['error']}")
        states = {r["state"] for r in body["recordings"]}
        if "failed" in states:
            raise ChartbridgeError(f"demo: the second site's recording failed: "
                                   f"{body['recordings'][0]['error']}")
        return bool(body["drafts"]) and "done" in states
    body = client.wait(f"/sessions/{sid}", drafted, timeout=timeout, what="the second site's draft")
    version = body["drafts"][0]["version"]
    draft = _answer(client.get(f"/sessions/{sid}/drafts/{version}"), "GET draft")
    result = {"session_id": sid, "draft_id": draft["id"], "draft_version": version,
              "sections": {s["code"]: s["text"] for s in draft["sections"]}}
    if not auto_approve:
        progress(f"draft v{version} ({len(draft['sections'])} sections) waits for a person "
                 "on the review page (no writes until it is approved)")
        return {**result, "ledger": [],
                "targets": {name: {"status": AWAITING, "external_id": None} for name in targets}}
    progress(f"{CLINICIAN_NAME} approves draft v{version} ({len(draft['sections'])} sections) "
             "with their own ID token")
    _answer(client.post(f"/sessions/{sid}/drafts/{version}/approval",
                        {"decision": "approved", "content_hash": draft["content_hash"]},
                        **{"X-Clinician-Token": idp.id_token(CLINICIAN.value, CLINICIAN_NAME,
                                                             "attending physician")}),
            "POST approval")

    def settled(body: dict) -> bool:
        return len(body["writes"]) == len(targets) and all(
            w["status"] not in ("pending", "in_flight") for w in body["writes"])
    writes = client.wait(f"/sessions/{sid}/writes", settled, timeout=timeout,
                         what="the second site's writes")
    for w in writes["writes"]:
        status = "succeeded" if w["status"] == "written" else w["status"]
        progress(f"write {w['target']}: {status} {w['external_id'] or w['reason'] or ''}")
    # the report shows the ledger's own rows (with the receivers' acknowledgements)
    return {**result, **written(engine.ledger.list(ORG, session_id=sid))}


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
