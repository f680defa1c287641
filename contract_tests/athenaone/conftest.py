"""Fixtures of the athenaOne contract suite.

By default every test runs against the in-process AthenaSimulator. With
CHARTBRIDGE_CONTRACT_BASE_URL set, the suite targets that athenaOne instead (e.g. the
preview sandbox, https://api.preview.platform.athenahealth.com) with:

    CHARTBRIDGE_ATHENA_TOKEN_URL      (default {base}/oauth2/v1/token)
    CHARTBRIDGE_ATHENA_CLIENT_ID
    CHARTBRIDGE_ATHENA_CLIENT_SECRET  (read from the environment by reference, never logged)
    CHARTBRIDGE_ATHENA_PRACTICE_ID    (default 195900, athena's preview practice)
    CHARTBRIDGE_ATHENA_DEPARTMENT_ID  (default 1)
    CHARTBRIDGE_ATHENA_PATIENT_ID     (a test patient of that practice)

and tests that need the simulator (fault injection, counters) skip, saying why.
"""
from __future__ import annotations

import itertools
import os
from dataclasses import dataclass
from datetime import datetime, timezone
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
)

LIVE_URL = os.environ.get("CHARTBRIDGE_CONTRACT_BASE_URL")
SECRET_ENV = "CHARTBRIDGE_ATHENA_CLIENT_SECRET_FOR_TESTS"
_encounters = itertools.count(700001)


@dataclass
class Athena:
    """One athenaOne endpoint under test: the simulator, or a live one."""

    sim: Any                     # AthenaSimulator, or None when live
    settings: dict               # the targets.athenaone block
    patient_id: str

    def need_sim(self, why: str):
        if self.sim is None:
            pytest.skip(f"needs the simulator ({why}); CHARTBRIDGE_CONTRACT_BASE_URL is set")
        return self.sim


@pytest.fixture
def athena(monkeypatch):
    if LIVE_URL:
        base = LIVE_URL.rstrip("/")
        monkeypatch.setenv(SECRET_ENV, os.environ.get("CHARTBRIDGE_ATHENA_CLIENT_SECRET", ""))
        settings = {"base_url": base,
                    "token_url": os.environ.get("CHARTBRIDGE_ATHENA_TOKEN_URL",
                                                f"{base}/oauth2/v1/token"),
                    "client_id": os.environ.get("CHARTBRIDGE_ATHENA_CLIENT_ID", ""),
                    "client_secret": f"env:{SECRET_ENV}",
                    "practice_id": os.environ.get("CHARTBRIDGE_ATHENA_PRACTICE_ID", "195900"),
                    "department_id": os.environ.get("CHARTBRIDGE_ATHENA_DEPARTMENT_ID", "1"),
                    "requests_per_second": 2}
        yield Athena(None, settings, os.environ.get("CHARTBRIDGE_ATHENA_PATIENT_ID", "1"))
        return
    from contract_tests.athenaone.sandbox import demo_target_settings

    from contract_tests.athenaone.simulator import AthenaSimulator

    with AthenaSimulator() as sim:
        monkeypatch.setenv(SECRET_ENV, "sim-secret")       # simulator-only credential
        settings = demo_target_settings(sim, secret_env=SECRET_ENV)
        settings.pop("fallback_subclass")
        settings["requests_per_second"] = 8
        yield Athena(sim, settings, "7")


def org_config(tmp_path: Path, settings: dict, *, org: str = "athena-org",
               note_type: str = "11488-4", extra_types: tuple[str, ...] = ()):
    """A validated OrgConfig (written to YAML and loaded, as the engine does)."""
    body = {"org": org, "name": "Athena contract test org", "timezone": "America/New_York",
            "allowed_sections": ["10164-2", "51848-0"],
            "note_types": {"default": note_type,
                           "allowed": [note_type, *[t for t in extra_types if t != note_type]]},
            "targets": {"athenaone": settings}}
    path = tmp_path / f"{org}.yaml"
    path.write_text(yaml.safe_dump(body), encoding="utf-8")
    return load_org_file(path)


def make_command(*, org: str = "athena-org", patient: str | None = "7",
                 department: str | None = None, approver: Identifier | None = None,
                 text: str = "Cough for three days, no fever.", encounter: str | None = None,
                 note_type: str | None = None, version: int = 1,
                 created_at: datetime | None = None, correlation_id: str = "corr-athena"
                 ) -> WriteCommand:
    """An approved create of a two-section draft, with athena identifiers as a session keeps
    them (types athena-patient / athena-department / athena-provider)."""
    created = created_at or datetime(2026, 11, 21, 15, 4, tzinfo=timezone.utc)
    draft = NoteDraft(
        id=f"draft-{version}", session_id="sess-1", version=version,
        sections=[NoteSection(code="10164-2", text=text),
                  NoteSection(code="51848-0", text="Viral bronchitis; fluids and rest.")],
        provenance=Provenance(transcriber="faster-whisper", transcriber_model="tiny.en",
                              generator="rules", generator_version="1", template_id="default",
                              template_version="1"),
        created_at=created)
    approval = Approval(draft_id=draft.id, draft_version=version,
                        content_hash=draft.content_hash(),
                        approver=approver or Identifier(value="u-1", type="EXTERNAL"),
                        role="physician", decision=Decision.APPROVED, at=created)
    patient_ids = [Identifier(value="MRN-0001", type="MRN")]
    if patient is not None:
        patient_ids.append(Identifier(value=patient, type="athena-patient"))
    encounter_ids = [Identifier(value=encounter or str(next(_encounters)), type="CSN")]
    if department is not None:
        encounter_ids.append(Identifier(value=department, type="athena-department"))
    return WriteCommand(org_id=org, target="athenaone", session_id="sess-1",
                        encounter_key=encounter_ids[0].value, note_version=version,
                        resource_kind="clinicaldocument", approval_state=ApprovalState.APPROVED,
                        correlation_id=correlation_id, patient_ids=patient_ids,
                        encounter_ids=encounter_ids, draft=draft, approval=approval,
                        extra={"note_type": note_type} if note_type else {})
