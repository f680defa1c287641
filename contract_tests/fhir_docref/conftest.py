"""Fixtures of the FHIR DocumentReference contract suite.

By default every test runs against the in-process FhirSimulator, once per server profile
of the simulator (us-core, epic, oracle-health: simulator.rules.RULES), with the
simulator's clock tied to the test's FrozenClock. A test asks what differs through
`fhir.profile_of` (the adapter's Profile: what it sends) and `sim.rules` (the server's
rules, written from the vendor's docs), never through the profile's name. With
CHARTBRIDGE_CONTRACT_BASE_URL set, the suite targets that FHIR server instead, with:

    CHARTBRIDGE_FHIR_PROFILE        us-core | epic | oracle-health (tests of the others skip)
    CHARTBRIDGE_FHIR_TOKEN_URL      (default: SMART discovery)
    CHARTBRIDGE_FHIR_CLIENT_ID
    CHARTBRIDGE_FHIR_KEY_REF        env:NAME or file:PATH of the PEM private key (by reference)
    CHARTBRIDGE_FHIR_KEY_ID         its kid
    CHARTBRIDGE_FHIR_ALGORITHM      RS384 | ES384 (default RS384)
    CHARTBRIDGE_FHIR_PATIENT_ID, CHARTBRIDGE_FHIR_ENCOUNTER_ID   a test patient and encounter

and tests that need the simulator (faults, counters, seeding) skip, saying why.
"""
from __future__ import annotations

import itertools
import os
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import yaml
from chartbridge.config.loader import load_org_file
from chartbridge.core.models import (
    Approval,
    ApprovalState,
    Decision,
    Identifier,
    NoteDraft,
    NoteSection,
    Provenance,
    WriteCommand,
    WriteKind,
)

from contract_tests.fhir_docref.simulator.rules import PROFILES as SIM_PROFILES

LIVE_URL = os.environ.get("CHARTBRIDGE_CONTRACT_BASE_URL")
KEY_ENV = "CHARTBRIDGE_FHIR_SIM_KEY"
_encounters = itertools.count(800001)


@dataclass
class Fhir:
    sim: Any                    # FhirSimulator, or None when live
    profile: str
    settings: dict
    patient: str
    encounter: str
    other_patient: str | None = None
    other_encounter: str | None = None

    def need_sim(self, why: str):
        if self.sim is None:
            pytest.skip(f"needs the simulator ({why}); CHARTBRIDGE_CONTRACT_BASE_URL is set")
        return self.sim

    @property
    def profile_of(self):
        """The adapter's Profile row for this run (what the adapter sends)."""
        from chartbridge.adapters.fhir_docref.profiles import profile
        return profile(self.profile)


@pytest.fixture(params=list(SIM_PROFILES))
def fhir(request, monkeypatch, clock):
    profile = request.param
    if LIVE_URL:
        live_profile = os.environ.get("CHARTBRIDGE_FHIR_PROFILE", "us-core")
        if profile != live_profile:
            pytest.skip(f"live server is profile {live_profile}")
        settings = {"base_url": LIVE_URL.rstrip("/"),
                    "client_id": os.environ.get("CHARTBRIDGE_FHIR_CLIENT_ID", ""),
                    "private_key": os.environ.get("CHARTBRIDGE_FHIR_KEY_REF", "env:MISSING"),
                    "key_id": os.environ.get("CHARTBRIDGE_FHIR_KEY_ID", ""),
                    "algorithm": os.environ.get("CHARTBRIDGE_FHIR_ALGORITHM", "RS384"),
                    "profile": profile, "identifier_system": "urn:chartbridge:contract-test"}
        if os.environ.get("CHARTBRIDGE_FHIR_TOKEN_URL"):
            settings["token_url"] = os.environ["CHARTBRIDGE_FHIR_TOKEN_URL"]
        yield Fhir(None, profile, settings, os.environ.get("CHARTBRIDGE_FHIR_PATIENT_ID", ""),
                   os.environ.get("CHARTBRIDGE_FHIR_ENCOUNTER_ID", ""))
        return
    from contract_tests.fhir_docref.sandbox import demo_target_settings
    from contract_tests.fhir_docref.sandbox import SIM_SCOPES, demo_keypair

    from contract_tests.fhir_docref.simulator import FhirSimulator

    pem, jwk = demo_keypair("ES384")
    # the simulator's clock is the test's clock: token expiry is moved, never waited for
    with FhirSimulator(profile, clock=lambda: clock.now().timestamp()) as sim:
        sim.add_patient("p1"); sim.add_encounter("e1", "p1")
        sim.add_patient("p2"); sim.add_encounter("e2", "p2")
        sim.register_client("chartbridge-sim", jwk, scopes=SIM_SCOPES)
        monkeypatch.setenv(KEY_ENV, pem)                    # simulator-only key
        yield Fhir(sim, profile, demo_target_settings(sim, key_ref=f"env:{KEY_ENV}"),
                   "p1", "e1", "p2", "e2")


def org_config(tmp_path: Path, settings: dict, *, org: str = "fhir-org"):
    body = {"org": org, "name": "FHIR contract test org", "timezone": "America/New_York",
            "allowed_sections": ["10164-2", "51848-0"],
            "note_types": {"default": "11506-3", "allowed": ["11506-3"]},
            "targets": {"fhir_docref": settings}}
    path = tmp_path / f"{org}.yaml"
    path.write_text(yaml.safe_dump(body), encoding="utf-8")
    return load_org_file(path)


@pytest.fixture
def adapter(fhir, services, tmp_path):
    from chartbridge.adapters.registry import registry
    org = org_config(tmp_path, fhir.settings)
    built = registry.get("fhir_docref").factory(org, org.targets["fhir_docref"], services)
    yield built
    built.client.http.close()


def make_command(fhir: Fhir, *, version: int = 1, approved: bool = True,
                 kind: WriteKind = WriteKind.CREATE, parent: str | None = None,
                 encounter_key: str | None = None, patient: str | None = None,
                 encounter: str | None = None, text: str = "Cough for three days, no fever.",
                 correlation_id: str = "corr-fhir", extra: dict | None = None,
                 at: datetime | None = None) -> WriteCommand:
    """A write of a two-section draft, with identifiers as a session keeps them (the FHIR
    Patient and Encounter ids typed FHIR, beside an MRN and a CSN)."""
    created = at or datetime(2026, 11, 21, 15, 4, tzinfo=timezone.utc) + timedelta(minutes=version)
    draft = NoteDraft(
        id=f"draft-{version}", session_id="sess-1", version=version,
        sections=[NoteSection(code="10164-2", text=text),
                  NoteSection(code="51848-0", text="Viral bronchitis; fluids & rest <3 days>.")],
        provenance=Provenance(transcriber="faster-whisper", transcriber_model="tiny.en",
                              generator="rules", generator_version="1", template_id="default",
                              template_version="1"),
        created_at=created)
    approval = Approval(draft_id=draft.id, draft_version=version, content_hash=draft.content_hash(),
                        approver=Identifier(value="prac-1", type="FHIR"),
                        approver_name="Dr. Approver", role="physician",
                        decision=Decision.APPROVED, at=created + timedelta(seconds=30)) if approved else None
    key = encounter_key or f"CSN-{next(_encounters)}"
    return WriteCommand(
        org_id="fhir-org", target="fhir_docref", session_id="sess-1", encounter_key=key,
        note_version=version, resource_kind="DocumentReference",
        approval_state=ApprovalState.APPROVED if approved else ApprovalState.PRELIMINARY,
        kind=kind, correlation_id=correlation_id,
        patient_ids=[Identifier(value="MRN-0001", type="MRN"),
                     Identifier(value=patient or fhir.patient, type="FHIR")],
        encounter_ids=[Identifier(value=key, type="CSN"),
                       Identifier(value=encounter or fhir.encounter, type="FHIR")],
        user=Identifier(value="prac-1", type="FHIR"), draft=draft, approval=approval,
        parent_external_id=parent, extra=extra or {"note_type": "11506-3"})
