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

from contract_tests.support.live import LiveRun, live_base_url

LIVE_URL = live_base_url()
SECRET_ENV = "CHARTBRIDGE_ATHENA_CLIENT_SECRET_FOR_TESTS"
SIM_FALLBACK_SUBCLASS = "CLINICALDOCUMENT_URGENTCARE"
_encounters = itertools.count(700001)
LIVE: dict[str, Any] = {}


def _live_settings() -> tuple[dict, str]:
    from contract_tests.athenaone.live import env, secret
    base = LIVE_URL.rstrip("/")
    key_ref = env("CHARTBRIDGE_CONTRACT_KEY")
    value = secret(key_ref) if key_ref else env("CHARTBRIDGE_ATHENA_CLIENT_SECRET")
    settings = {"base_url": base,
                "token_url": env("CHARTBRIDGE_CONTRACT_TOKEN_URL", "CHARTBRIDGE_ATHENA_TOKEN_URL",
                                 default=f"{base}/oauth2/v1/token"),
                "client_id": env("CHARTBRIDGE_CONTRACT_CLIENT_ID", "CHARTBRIDGE_ATHENA_CLIENT_ID"),
                "client_secret": f"env:{SECRET_ENV}",
                "practice_id": env("CHARTBRIDGE_ATHENA_PRACTICE_ID", default="195900"),
                "department_id": env("CHARTBRIDGE_ATHENA_DEPARTMENT_ID", default="1"),
                "requests_per_second": 2}
    return settings, value


def _created(request, response) -> list[str]:
    """athena answers an upload 200 with {"clinicaldocumentid": N, "success": true}."""
    if "/documents/clinicaldocument" not in request.url.path or request.method != "POST":
        return []
    try:
        body = response.json()
    except ValueError:
        return []
    docid = body.get("clinicaldocumentid") if isinstance(body, dict) else None
    return [f"clinicaldocument/{docid}"] if docid else []


def pytest_configure(config):
    if not LIVE_URL or "run" in LIVE:
        return
    from contract_tests.athenaone.live import AthenaTarget, env
    settings, value = _live_settings()
    target = AthenaTarget(settings, value)
    run = LiveRun("athenaone", settings["base_url"], preflight=target.preflight,
                  created=_created,
                  credentials={"client_id": settings["client_id"],
                               "key": env("CHARTBRIDGE_CONTRACT_KEY")})
    LIVE.update(run=run, target=target, settings=settings, secret=value)
    config.pluginmanager.register(run, "chartbridge-live-run")


def pytest_collection_modifyitems(config, items):
    """Live: the simulator's own tests and offline checks are not scenarios of the practice."""
    if not LIVE_URL:
        return
    keep = [i for i in items if "athena" in getattr(i, "fixturenames", ())
            and "test_simulator" not in i.nodeid and "test_shared_quota" not in i.nodeid
            and "test_reconcile_answers" not in i.nodeid]
    if len(keep) != len(items):
        config.hook.pytest_deselected(items=[i for i in items if i not in keep])
        items[:] = keep


@dataclass
class Athena:
    """One athenaOne endpoint under test: the simulator, or a live one."""

    sim: Any                     # AthenaSimulator, or None when live
    settings: dict               # the targets.athenaone block
    patient_id: str
    # a CLINICALDOCUMENT subclass the practice accepts (live: from its config, never guessed)
    fallback_subclass: str | None = SIM_FALLBACK_SUBCLASS
    target: Any = None           # live: contract_tests.athenaone.live.AthenaTarget

    def need_sim(self, why: str):
        if self.sim is None:
            pytest.skip(f"simulator-only: {why}")
        return self.sim


@pytest.fixture
def athena(monkeypatch):
    if LIVE_URL:
        monkeypatch.setenv(SECRET_ENV, LIVE["secret"])
        yield Athena(None, dict(LIVE["settings"]), os.environ.get("CHARTBRIDGE_ATHENA_PATIENT_ID", "1"),
                     fallback_subclass=os.environ.get("CHARTBRIDGE_ATHENA_FALLBACK_SUBCLASS") or None,
                     target=LIVE["target"])
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


class AthenaDriver:
    """The shared scenarios' view of this suite (contract_tests/capabilities/scenarios.py):
    a command's artifacts are the practice's clinical documents carrying its write id
    (athena's own document list live; the simulator's store otherwise)."""

    name = "athenaone"
    losing_the_answer = None
    why_no_lost_answer = ("athenaone: the lost answer is injected server-side "
                          "(test_lost_response_is_reconciled_not_resent, simulator-only)")

    updates_in_place = False
    shows_parent_link = False
    lacks = {
        "preliminary": "athenaone: the adapter files approved notes only (an unapproved "
                       "write is refused: test_unapproved_or_non_create_writes_are_refused)",
        "replace": "athenaone: clinical documents are new documents only (no replace)",
        "append": "athenaone: clinical documents are new documents only (no addendum)",
        "stale_check": "athenaone: no update of a filed document, so nothing to go stale",
    }

    def __init__(self, athena: Athena, adapter: Any) -> None:
        self.athena, self.adapter = athena, adapter

    def filed(self, ref: str):
        """The clinical document in the simulator's store (live: its list shows no status)."""
        from contract_tests.capabilities.scenarios import Filed
        if self.athena.sim is None:
            return None
        [doc] = [d for d in self.athena.sim.documents(patientid=self.athena.patient_id)
                 if str(d["clinicaldocumentid"]) == ref]
        return Filed(in_the_right_chart=str(doc.get("patientid", self.athena.patient_id))
                     == str(self.athena.patient_id))

    def refusal(self, ledger):
        """A department athena does not know: athena answers 400 "Invalid departmentid."."""
        from chartbridge.core.models import WriteStatus

        from contract_tests.capabilities.scenarios import Refusal
        record = ledger.execute(make_command(patient=self.athena.patient_id, department="999"),
                                self.adapter)
        assert record.status == WriteStatus.FAILED, record.status
        assert record.outcome["status"] == 400, record.outcome
        return Refusal(permanent=record.last_error_class == "PermanentError",
                       text=record.last_error or "", names="departmentid")

    def command(self, **kw: Any) -> WriteCommand:
        return make_command(patient=self.athena.patient_id, **kw)

    def count(self, command: WriteCommand) -> int:
        from chartbridge.adapters.athenaone.mapping import write_id
        wid = write_id(command)
        if self.athena.sim is None:
            return self.athena.target.count_write(self.athena.patient_id, wid)
        return sum(1 for d in self.athena.sim.documents(patientid=self.athena.patient_id)
                   if wid in str(d.get("internalnote", "")))


@pytest.fixture
def driver(athena, services, tmp_path):
    from chartbridge.adapters.athenaone import SPEC
    org = org_config(tmp_path, athena.settings, extra_types=("11506-3",))
    return AthenaDriver(athena, SPEC.factory(org, org.targets["athenaone"], services))
