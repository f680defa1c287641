"""The embedded Haiku page in real Chromium: the SMART EHR launch against the Epic
simulator's authorization server, a refused patient mismatch, a page rebuilt from the
engine after a reload or a killed web view, and a clinician's edit in Epic shown as
protected. Transcription and drafting are the contract suite's small fakes."""
from __future__ import annotations

import re

import pytest

from chartbridge.core.models import NoteSection, WriteStatus
from chartbridge.core.ports import GeneratedNote
from contract_tests.epic_haiku.simulator import synth_wav
from contract_tests.epic_haiku.stack import ORG, ChunkTranscriber, EpicStack

from .a11y import check_accessibility
from .conftest import PHONE, shot, wait_until

pytestmark = pytest.mark.browser
CLIENT = "demo-epic-haiku-page"          # launch_client_id in config/orgs/demo-epic.yaml
AUDIO = synth_wav(25)                    # three chunks of 10 s


class ThreeSections:
    name, version = "fake-sections", "1"

    def generate(self, segments, *, allowed_sections, note_type=None, settings=None):
        ids = [s.id for s in segments]
        return GeneratedNote([NoteSection(code=c, text=f"{c} text", segment_ids=ids)
                              for c in ("10164-2", "10187-3", "51847-2") if c in allowed_sections],
                             "fake", "1")


@pytest.fixture
def stack(tmp_path):
    with EpicStack(tmp_path, f"sqlite:///{tmp_path / 'engine.db'}",
                   transcriber_factory=lambda org: ChunkTranscriber(),
                   generator_factory=lambda org: ThreeSections(), sweep_interval_s=0.5) as s:
        s.sim.smart.register_app(CLIENT, [f"{s.engine_url}/orgs/{ORG}/epic/haiku/callback"])
        yield s


def launch_url(stack, sid, *, patient=None, encounter=None):
    """What Epic opens in the Haiku web view: the app's launch URL with iss and launch."""
    state = stack.sim.session_state(sid)
    fhir_patient, fhir_encounter = stack.sim.smart.fhir_ids_of(state["begin"])
    launch = stack.sim.smart.new_launch(patient=patient or fhir_patient,
                                        encounter=encounter or fhir_encounter)
    return stack.sim.smart.launch_url(f"{stack.engine_url}/orgs/{ORG}/epic/haiku/launch",
                                      launch, session=sid)


def state_text(page) -> str:
    return re.sub(r"\s+", " ", page.locator("#state").inner_text()).strip()


def test_full_launch_shows_the_session_as_the_engine_stores_it(stack, new_page):
    sim = stack.sim
    # Given a visit recorded and documented in Epic
    sim.begin_session(ORG, session_id="AMB-P1")
    sim.record("AMB-P1", AUDIO, chunk_seconds=10, status="Stopped")
    sim.wait_documentation("AMB-P1", 1, timeout=30)
    wait_until(lambda: any(r.status == WriteStatus.SUCCEEDED for r in stack.ledger_rows("AMB-P1")),
               what="DocumentationReady recorded as written")
    # When Haiku opens the page (SMART EHR launch) on a phone-sized web view
    page = new_page(PHONE)
    page.goto(launch_url(stack, "AMB-P1"))
    page.wait_for_url(re.compile(r"/epic/haiku/sessions/[0-9a-f]+$"))
    # Then the launch used PKCE S256, state, aud = iss and the launch handle
    (auth,) = sim.smart.authorize_requests
    assert auth.outcome == "code"
    assert auth.params["code_challenge_method"] == "S256" and len(auth.params["code_challenge"]) == 43
    assert auth.params["aud"] == sim.smart.fhir_base and auth.params["launch"]
    assert auth.params["state"] and auth.params["client_id"] == CLIENT
    assert "launch" in auth.params["scope"].split()
    assert sim.smart.token_results == [("ok", 200)]
    # And the page shows the engine's state: the version, the chunks, the sections sent
    page.wait_for_selector("#sections li[data-section='51847-2']")
    text = state_text(page)
    assert "Recording parts received: 3, transcribed: 3" in text
    assert page.locator("#versions li[data-version='1']").get_attribute("data-state") == "done"
    for code in ("10164-2", "10187-3", "51847-2"):
        assert "sent to Epic" in page.locator(f"#sections li[data-section='{code}']").inner_text()
    # And the SMART token is not in the browser: one httpOnly SameSite cookie holding an id
    cookies = page.context.cookies()
    assert [c["name"] for c in cookies] == ["cb_haiku"]
    assert cookies[0]["httpOnly"] and cookies[0]["sameSite"] == "Lax"
    assert cookies[0]["path"] == f"/orgs/{ORG}/epic/haiku"
    assert "access_token" not in page.content()
    # And the launch is audited
    session = stack.session("AMB-P1")
    assert "haiku_page.launched" in [e.action for e in stack.engine.store.audit_trail(ORG, session.id)]
    check_accessibility(page)
    shot(page, "haiku-page-phone")


def test_patient_mismatch_is_refused_and_audited(stack, new_page):
    sim = stack.sim
    # Given a session for one patient
    sim.begin_session(ORG, session_id="AMB-P2")
    sim.record("AMB-P2", AUDIO, chunk_seconds=10, status="Paused", announce_available=False)
    # When the page is launched from another patient's chart
    page = new_page(PHONE)
    page.goto(launch_url(stack, "AMB-P2", patient="eOtherPatientFhirId000001"))
    # Then it refuses, in plain words, and shows nothing of the session
    refusal = page.locator("#refusal")
    assert "different patient" in refusal.inner_text()
    assert page.locator("#state").count() == 0
    assert "Recording parts" not in page.content()
    # And the refusal is audited against the session
    session = stack.session("AMB-P2")
    refused = [e for e in stack.engine.store.audit_trail(ORG, session.id)
               if e.action == "haiku_page.refused"]
    assert len(refused) == 1 and refused[0].outcome == "failure"
    assert refused[0].detail.get("reason") == "patient_mismatch"
    # And the session's page cannot be opened with what this browser holds
    page.goto(f"{stack.engine_url}/orgs/{ORG}/epic/haiku/sessions/{session.id}")
    assert "opened from Haiku" in page.locator("#refusal").inner_text()
    check_accessibility(page)
    shot(page, "haiku-page-refused")


def test_encounter_mismatch_and_untrusted_iss_are_refused(stack, new_page):
    sim = stack.sim
    sim.begin_session(ORG, session_id="AMB-P3")
    page = new_page(PHONE)
    # When the launch names the right patient but another encounter
    page.goto(launch_url(stack, "AMB-P3", encounter="eOtherEncounterFhirId0001"))
    # Then it is refused
    assert "different visit" in page.locator("#refusal").inner_text()
    # And a launch whose iss is not the org's Epic site never leaves the engine
    before = len(sim.smart.authorize_requests)
    bad = launch_url(stack, "AMB-P3").replace("iss=http", "iss=https%3A%2F%2Fevil.example%2F%3Fx%3Dhttp")
    page.goto(bad)
    assert "not trust" in page.locator("#refusal").inner_text()
    assert len(sim.smart.authorize_requests) == before
    # And a launch missing a parameter names it
    page.goto(f"{stack.engine_url}/orgs/{ORG}/epic/haiku/launch?session=AMB-P3&iss=x")
    assert page.locator("code").inner_text() == "launch"


def test_reload_and_killed_web_view_show_the_same_state(stack, new_page, browser):
    sim = stack.sim
    # Given a recording under way: version 1 of 3 chunks announced, two received so far
    sim.begin_session(ORG, session_id="AMB-P4")
    sim.record("AMB-P4", AUDIO, chunk_seconds=10, status="Stopped", announce_chunks=[1, 2])
    session = stack.session("AMB-P4")
    wait_until(lambda: sum(c.state == "transcribed" for c in
                           stack.engine.store.chunks(ORG, session.id)) == 2,
               what="two chunks transcribed")
    page = new_page(PHONE)
    page.goto(launch_url(stack, "AMB-P4"))
    page.wait_for_selector("#versions li[data-version='1']")
    before = state_text(page)
    assert "received: 2, transcribed: 2" in before and "2 of 3 parts transcribed" in before
    # When the page is reloaded, and navigated away and back
    page.reload()
    assert state_text(page) == before
    url = page.url
    page.goto(f"{stack.engine_url}/healthz")
    page.go_back()
    page.wait_for_url(url)
    assert state_text(page) == before
    # And the web view is killed and opened again with what it kept (its cookie)
    kept = page.context.storage_state()
    page.context.close()
    revived = browser.new_context(viewport=PHONE, storage_state=kept)
    try:
        again = revived.new_page()
        again.goto(url)
        # Then the same state is shown, rebuilt from the engine
        assert state_text(again) == before
        # And when the last chunk arrives the open page updates itself (no reload)
        sim.announce_chunk("AMB-P4", 3)
        again.wait_for_selector("#versions li[data-version='1'][data-state='done']", timeout=30_000)
        assert "received: 3, transcribed: 3" in state_text(again)
        shot(again, "haiku-page-after-reload")
    finally:
        revived.close()


def test_clinician_edit_in_epic_shows_as_protected(stack, new_page):
    sim = stack.sim
    # Given the page open on a documented session
    sim.begin_session(ORG, session_id="AMB-P5")
    sim.record("AMB-P5", AUDIO, chunk_seconds=10, status="Stopped")
    sim.wait_documentation("AMB-P5", 1, timeout=30)
    page = new_page(PHONE)
    page.goto(launch_url(stack, "AMB-P5"))
    assert page.locator("#protected-none").count() == 1
    # When the clinician edits Review of systems in Epic
    sim.edit_sections("AMB-P5", ["10187-3"])
    # Then the open page shows it as protected, without a reload
    item = page.wait_for_selector("#protected li[data-section='10187-3']", timeout=15_000)
    assert "Review of systems" in item.inner_text() and "protected" in item.inner_text()
    check_accessibility(page)
    shot(page, "haiku-page-protected")


def test_page_fits_a_phone_with_real_length_ids(stack, new_page):
    """Epic's ids are long unbroken strings (FHIR ids of 40+ characters, session ids that
    are GUID-like): the page on a 390 x 844 web view never scrolls sideways."""
    sim = stack.sim
    sid = "AMB-" + "7F3C9A21D4E84B0FA6C15E2D9B7341C8" + "-2026-12-01-0930-FM-10501"
    patient = "eJzlzKe3KPzAV5TtkxmNivQ3eJzlzKe3KPzAV5TtkxmNivQ3xy"
    encounter = "eoK8nLRcEypNjtns4dgnF3Q3eoK8nLRcEypNjtns4dgnF3Q3xy"
    sim.begin_session(ORG, session_id=sid,
                      patient_ids=[{"ID": "Z44810000123456", "Type": "MRN"}, {"ID": patient, "Type": "FHIR"}],
                      encounter_ids=[{"ID": "3000123456789012", "Type": "CSN"},
                                     {"ID": encounter, "Type": "FHIR"}])
    sim.record(sid, AUDIO, chunk_seconds=10, status="Stopped")
    sim.wait_documentation(sid, 1, timeout=30)
    page = new_page(PHONE)
    page.goto(sim.haiku_launch_url(sid))
    page.wait_for_url(re.compile(r"/epic/haiku/sessions/[0-9a-f]+$"))
    page.wait_for_selector("#sections li[data-section='51847-2']")
    wide = page.evaluate("document.documentElement.scrollWidth")
    assert wide <= PHONE["width"], f"page is {wide} px wide on a {PHONE['width']} px screen"
    shot(page, "haiku-page-long-ids-phone")
