"""Fixtures of the FHIR DocumentReference contract suite.

By default every test runs against the in-process FhirSimulator, once per server profile
of the simulator (us-core, epic, oracle-health: simulator.rules.RULES), with the
simulator's clock tied to the test's FrozenClock. A test asks what differs through
`fhir.profile_of` (the adapter's Profile: what it sends) and `sim.rules` (the server's
rules, written from the vendor's docs), never through the profile's name.

With CHARTBRIDGE_CONTRACT_BASE_URL set (what `chartbridge contract-test --base-url` or
`--org ORG --env sandbox` sets) the suite runs LIVE against that FHIR server: settings in
live.py (client id, key reference, kid, token URL, profile, test patient/encounter); a
preflight (discovery + token, and a test patient/encounter when none is named) runs before
any scenario; what the adapter filed is read back through the server's own API
(`fhir.target`: read, search by identifier, an EHR-side update); scenarios that need fault
injection or the simulator's store skip as "simulator-only: ..."; the run ends with the
summary of contract_tests/support/live.py.
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
from contract_tests.support.live import LiveRun, live_base_url

LIVE_URL = live_base_url()
LIVE: dict[str, Any] = {}


def pytest_configure(config):
    if not LIVE_URL or "run" in LIVE:
        return
    from chartbridge.adapters.fhir_docref.profiles import profile as adapter_profile

    from contract_tests.fhir_docref.live import FhirTarget, live_settings
    settings = live_settings()
    target = FhirTarget(settings, send_scope=adapter_profile(settings["profile"]).send_scope)
    run = LiveRun("fhir_docref", settings["base_url"], preflight=target.preflight,
                  credentials={"client_id": settings["client_id"],
                               "key": settings["private_key"], "key_id": settings["key_id"]})
    LIVE.update(run=run, target=target, settings=settings)
    config.pluginmanager.register(run, "chartbridge-live-run")
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
    target: Any = None          # live: contract_tests.fhir_docref.live.FhirTarget

    @property
    def live(self) -> bool:
        return self.sim is None

    def need_sim(self, why: str):
        if self.sim is None:
            pytest.skip(f"simulator-only: {why}")
        return self.sim

    @property
    def identifier_system(self) -> str:
        return self.settings["identifier_system"]

    @property
    def profile_of(self):
        """The adapter's Profile row for this run (what the adapter sends)."""
        from chartbridge.adapters.fhir_docref.profiles import profile
        return profile(self.profile)


@pytest.fixture(params=list(SIM_PROFILES))
def fhir(request, monkeypatch, clock):
    profile = request.param
    if LIVE_URL:
        settings = LIVE["settings"]
        if profile != settings["profile"]:
            pytest.skip(f"the live server plays profile {settings['profile']}, not {profile}")
        target = LIVE["target"]
        yield Fhir(None, profile, settings, target.patient, target.encounter, target=target)
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


def pytest_collection_modifyitems(config, items):
    """Live: only scenarios against the server, in its own profile, are collected (the other
    profiles' cases, the simulator's self-tests and offline checks are not scenarios of
    this server; the summary counts them as not collected)."""
    if not LIVE_URL:
        return
    wanted = LIVE["settings"]["profile"]
    keep, drop = [], []
    for item in items:
        param = getattr(getattr(item, "callspec", None), "params", {}).get("fhir")
        other_profile = param is not None and param != wanted
        # the simulator's own tests and offline checks (no `fhir` target) are not scenarios
        offline = "fhir" not in getattr(item, "fixturenames", ()) or "test_simulator" in item.nodeid
        (drop if other_profile or offline else keep).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


class FhirDriver:
    """The shared scenarios' view of this suite (contract_tests/capabilities/scenarios.py)."""

    name = "fhir_docref"

    def __init__(self, fhir: Fhir, adapter: Any) -> None:
        self.fhir, self.adapter = fhir, adapter
        prof = fhir.profile_of
        self.losing_the_answer = self._losing if prof.search_by_identifier else None
        self.why_no_lost_answer = None if prof.search_by_identifier else (
            f"{fhir.profile}: the server keeps no identifier, so a lost answer is left to a "
            "person (needs_reconciliation; test_lost_response_after_201_never_files_twice)")

        self.updates_in_place = prof.update
        self.shows_parent_link = prof.relates_to
        self.lacks: dict[str, str] = {}
        if not prof.preliminary:
            self.lacks["preliminary"] = (f"{fhir.profile}: files final documents only (a "
                                         "preliminary is refused before sending: "
                                         "test_a_profile_without_preliminary_refuses_it_before_sending)")
        if not prof.update:
            self.lacks["stale_check"] = (f"{fhir.profile}: the adapter files no update, so "
                                         "there is no If-Match to go stale")

    def command(self, **kw: Any) -> WriteCommand:
        import uuid
        # an encounter key of its own per command (a live server keeps earlier runs' notes)
        kw.setdefault("encounter_key", f"CSN-{uuid.uuid4().hex[:10]}")
        return make_command(self.fhir, **kw)

    def _doc(self, ref: str) -> dict:
        if self.fhir.live:
            return self.fhir.target.read(ref)
        return self.fhir.sim.get("DocumentReference", ref.split("/")[1])

    def filed(self, ref: str):
        from contract_tests.capabilities.scenarios import Filed
        doc = self._doc(ref)
        chart = doc["subject"]["reference"].endswith(f"Patient/{self.fhir.patient}") and \
            [e["reference"].rsplit("/", 2)[-2:] for e in doc["context"]["encounter"]] == \
            [["Encounter", self.fhir.encounter]]
        return Filed(final=doc["docStatus"] == "final" if doc.get("docStatus") else None,
                     replaced=doc["status"] == "superseded", in_the_right_chart=chart)

    def final_after(self, prelim, command: WriteCommand) -> WriteCommand:
        if self.updates_in_place:      # the same document, updated with If-Match
            return make_command(self.fhir, version=2, kind=WriteKind.EDIT,
                                parent=prelim.external_id, encounter_key=command.encounter_key,
                                extra={"parent_version": prelim.external_version})
        return make_command(self.fhir, version=2, encounter_key=command.encounter_key)

    def correction(self, parent, command: WriteCommand, kind: WriteKind) -> WriteCommand:
        return make_command(self.fhir, version=2, kind=kind, parent=parent.external_id,
                            encounter_key=command.encounter_key, text="Corrected: cough 4 days.")

    def parent_of(self, record) -> str | None:
        rel = self._doc(record.external_id).get("relatesTo") or []
        assert len(rel) <= 1, rel
        if not rel:
            return None
        code = {WriteKind.REPLACE: "replaces", WriteKind.APPEND: "appends"}
        assert rel[0]["code"] in code.values(), rel
        return "/".join(rel[0]["target"]["reference"].rsplit("/", 2)[-2:])

    def edit_elsewhere(self, record, command: WriteCommand, ledger):
        if self.fhir.live:       # the EHR side: a plain PUT by the site's own client
            edited = self.fhir.target.update_elsewhere(record.external_id,
                                                       {"description": "edited at the site"})
            assert str(edited["meta"]["versionId"]) != record.external_version
            return None
        # (simulator) another version is filed over ours
        ledger.execute(make_command(self.fhir, version=2, approved=False, kind=WriteKind.EDIT,
                                    parent=record.external_id, encounter_key=command.encounter_key,
                                    extra={"parent_version": record.external_version}),
                       self.adapter)
        return None

    def stale_edit(self, record, command: WriteCommand) -> WriteCommand:
        return make_command(self.fhir, version=3, kind=WriteKind.EDIT, parent=record.external_id,
                            encounter_key=command.encounter_key,
                            extra={"parent_version": record.external_version})

    def site_edit_survived(self, record, token) -> bool:
        if self.fhir.live:
            return self._doc(record.external_id).get("description") == "edited at the site"
        return len(self.fhir.sim.history("DocumentReference", record.external_id.split("/")[1])) == 2

    def refusal(self, ledger):
        """The adapter validates what it renders (fhir.resources), so a structural error
        cannot be provoked through a note: the server's refusal is met through the adapter's
        own FHIR client, with a DocumentReference lacking `content` (1..1 in R4)."""
        from chartbridge.core.errors import PermanentError

        from contract_tests.capabilities.scenarios import Refusal
        bad = {"resourceType": "DocumentReference", "status": "current",
               "subject": {"reference": f"Patient/{self.fhir.patient}"}}
        try:
            self.adapter.client.create(bad)
        except PermanentError as exc:
            assert exc.status in (400, 422), exc.status
            issues = (getattr(exc, "detail", None) or {}).get("issues") or []
            text = " ".join([str(exc)] + [i.get("expression", "") for i in issues])
            return Refusal(permanent=True, text=text, names="content")
        raise AssertionError("the server accepted a DocumentReference without content")

    def count(self, command: WriteCommand) -> int:
        """Documents carrying the write's identifier: the server's own search (live) or the
        simulator's store; where the server keeps no identifier, the chart's documents."""
        key = command.idempotency_key()
        if self.fhir.live:
            return self.fhir.target.count_by_identifier(self.fhir.identifier_system, key)
        docs = self.fhir.sim.documents(self.fhir.patient)
        if not self.fhir.profile_of.search_by_identifier:
            return len(docs)
        return sum(1 for d in docs for i in d.get("identifier", []) if i.get("value") == key)

    def _losing(self):
        from contextlib import contextmanager

        from contract_tests.support.live import DropResponse

        @contextmanager
        def losing():
            http = self.adapter.client.http
            inner = http._transport
            http._transport = DropResponse(
                inner, times=1, methods=("POST",),      # the write, not the token request
                match=lambda r: "fhir+json" in r.headers.get("Content-Type", ""))
            try:
                yield
            finally:
                http._transport = inner
        return losing()


@pytest.fixture
def driver(fhir, adapter):
    return FhirDriver(fhir, adapter)


if LIVE_URL:
    @pytest.fixture
    def clock():
        """Live: the server checks our assertions' iat/exp against its own (real) clock."""
        from chartbridge.core.clock import SystemClock
        return SystemClock()
