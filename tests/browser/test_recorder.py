"""The SMART ambient recorder in real Chromium: launched from the FHIR simulator's SMART EHR
launch, a fixture WAV as the microphone (Chromium's fake media capture), chunks uploaded
through the capture API as they are cut, a reload mid-visit that continues after the chunks
the engine stored, stop, edit, approve, and every target written (FHIR DocumentReference,
HL7 MDM). The transcriber is the contract suite's stand-in; the chunks are decoded for real
by the API."""
from __future__ import annotations

import logging
import re
import threading
from pathlib import Path

import pytest
import yaml

from chartbridge import runtime
from chartbridge.bootstrap import bootstrap
from chartbridge.config.loader import EXAMPLE_ORGS
from chartbridge.core.models import find_identifier
from chartbridge.web import create_app
from contract_tests.epic_haiku.stack import ChunkTranscriber
from contract_tests.fhir_docref.sandbox import SIM_SCOPES, demo_keypair
from contract_tests.fhir_docref.sandbox import demo_target_settings as fhir_settings
from contract_tests.fhir_docref.simulator import FhirSimulator
from contract_tests.hl7_mdm.sandbox import demo_target_settings as mllp_settings
from contract_tests.hl7_mdm.simulator import HL7MDMSimulator
from tests.fakes import OneSection

from .a11y import check_accessibility
from .conftest import ARGS, AXE, CHROMIUM, DESKTOP, PHONE, shot, wait_until

pytestmark = pytest.mark.browser
ORG = "smart-clinic"
CLIENT = "chartbridge-recorder"
PATIENT, ENCOUNTER = "pat-rec-1", "enc-rec-1"
DOCTOR = "Practitioner/dr-rivera"
WAV = Path(__file__).resolve().parents[1] / "fixtures" / "encounters" / "encounter-1.wav"
CHUNK_S = 2


class Site:
    """The FHIR server (with its SMART launch) and an MDM interface engine, the engine on
    waitress with its in-process worker, and an org whose recorder trusts that server."""

    def __init__(self, tmp_path: Path, database_url: str, *, recorder=None, policy=None) -> None:
        self.fhir = FhirSimulator("us-core")
        self.fhir.start()
        self.mllp = HL7MDMSimulator()
        self.mllp.start()
        self.fhir.add_patient(PATIENT)
        self.fhir.add_encounter(ENCOUNTER, PATIENT)
        pem, jwk = demo_keypair()
        key = tmp_path / "fhir.pem"
        key.write_text(pem)
        self.fhir.register_client("chartbridge-sim", jwk, scopes=SIM_SCOPES)
        orgs = tmp_path / "orgs"
        orgs.mkdir()
        doc = yaml.safe_load((EXAMPLE_ORGS / "demo-multi.yaml").read_text())
        doc.update(org=ORG, name="Smart Clinic",
                   targets={"fhir_docref": fhir_settings(self.fhir, key_ref=f"file:{key}"),
                            "hl7_mdm": mllp_settings(self.mllp)},
                   drafting={"generator": "rules", "template": "default"},
                   recorder={"fhir_base": self.fhir.base_url, "client_id": CLIENT,
                             "chunk_seconds": CHUNK_S, **(recorder(self.fhir) if recorder else {})})
        if policy:
            doc.setdefault("policy", {}).update(policy)
        (orgs / f"{ORG}.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
        self.engine = bootstrap(database_url=database_url, config_dir=orgs,
                                transcriber_factory=lambda org: ChunkTranscriber(),
                                generator_factory=lambda org: OneSection())
        self.rt = runtime.start(self.engine, sweep_interval_s=1.0)
        from waitress.server import create_server
        app = self.app = create_app(self.engine, jobs=self.rt.jobs)
        self.server = create_server(app, host="127.0.0.1", port=0, threads=8)
        self.url = f"http://127.0.0.1:{self.server.effective_port}"
        app.config["CHARTBRIDGE_PUBLIC_URL"] = self.url
        threading.Thread(target=self.server.run, daemon=True, name="recorder-http").start()
        self.fhir.launch.register_app(CLIENT, [f"{self.url}/orgs/{ORG}/recorder/callback"])

    def launch_url(self, *, encounter: str | None = ENCOUNTER) -> str:
        launch = self.fhir.launch.new_launch(patient=PATIENT, encounter=encounter,
                                             user=DOCTOR, name="Dr. Ana Rivera")
        return self.fhir.launch.launch_url(f"{self.url}/orgs/{ORG}/recorder/launch", launch)

    def sessions(self):
        from chartbridge.ledger.tables import SessionRow
        from sqlalchemy import select
        with self.engine.db.transaction() as tx:
            ids = [r for (r,) in tx.execute(select(SessionRow.id).where(SessionRow.org_id == ORG))]
        return [self.engine.store.get_session(ORG, i) for i in ids]

    def stop(self) -> None:
        self.server.close()
        self.rt.stop()
        self.fhir.stop()
        self.mllp.stop()
        self.engine.db.dispose()


@pytest.fixture
def site(tmp_path):
    s = Site(tmp_path, f"sqlite:///{tmp_path / 'engine.db'}")
    yield s
    s.stop()


@pytest.fixture(scope="module")
def mic_browser(browser):
    """Chromium whose microphone is the fixture WAV (looped) and which grants it unasked:
    a second browser of the suite's one Playwright (conftest's `browser`, which also
    decides skip or fail when Chromium is missing)."""
    b = browser.browser_type.launch(executable_path=CHROMIUM, headless=True, args=ARGS + [
        "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream",
        f"--use-file-for-fake-audio-capture={WAV}"])
    yield b
    b.close()


@pytest.fixture
def open_page(mic_browser):
    contexts = []

    def make(viewport):
        ctx = mic_browser.new_context(viewport=viewport)
        ctx.set_default_timeout(20_000)
        ctx.add_init_script(path=str(AXE))
        contexts.append(ctx)
        return ctx.new_page()
    yield make
    for ctx in contexts:
        ctx.close()


def status(page) -> str:
    return re.sub(r"\s+", " ", page.locator("#status").inner_text()).strip()


def stored_chunks(site, session_id):
    return sorted(c.sequence for c in site.engine.store.chunks(ORG, session_id))


@pytest.mark.parametrize("viewport", [pytest.param(PHONE, id="phone"),
                                      pytest.param(DESKTOP, id="desktop")])
def test_launch_record_reload_stop_edit_approve_writes_every_target(site, open_page, viewport,
                                                                    caplog):
    caplog.set_level(logging.INFO)
    page = open_page(viewport)
    # When the EHR opens the recorder from the visit (SMART EHR launch)
    page.goto(site.launch_url())
    page.wait_for_url(re.compile(rf"/orgs/{ORG}/recorder$"))
    # Then the launch used PKCE S256, state, aud = iss, the launch handle and a nonce
    (auth,) = site.fhir.launch.authorize_requests
    assert auth.outcome == "code" and auth.params["client_id"] == CLIENT
    assert auth.params["code_challenge_method"] == "S256" and len(auth.params["code_challenge"]) == 43
    assert auth.params["aud"] == site.fhir.base_url and auth.params["launch"]
    assert auth.params["state"] and auth.params["nonce"]
    assert {"launch", "openid", "fhirUser"} <= set(auth.params["scope"].split())
    assert site.fhir.launch.token_results == [("ok", 200)]
    # And the browser holds only an httpOnly page-session id; no token is in the page
    cookies = {c["name"]: c for c in page.context.cookies()}
    assert set(cookies) == {"cb_recorder"} and cookies["cb_recorder"]["httpOnly"]
    assert cookies["cb_recorder"]["path"] == f"/orgs/{ORG}"
    assert "access_token" not in page.content()
    page.wait_for_selector("#record:not([disabled])")
    assert PATIENT in page.locator("#context").inner_text()
    check_accessibility(page)
    shot(page, f"recorder-ready-{viewport['width']}")

    # When the clinician records the patient's consent and starts, with the keyboard only
    page.focus("#consent-capture")
    page.keyboard.press("Space")
    page.keyboard.press("Tab")
    page.keyboard.press("Space")
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.id") == "record"
    page.keyboard.press("Enter")
    page.wait_for_selector("#record.recording")
    # Then chunks reach the engine while recording, each one whole (decoded by the API)
    (session,) = wait_until(site.sessions, what="the API session opened")
    assert find_identifier(session.patient_ids, "FHIR").value == PATIENT
    assert find_identifier(session.encounter_ids, "FHIR").value == ENCOUNTER
    assert session.user.value == site.fhir.base_url + "/" + DOCTOR
    wait_until(lambda: len(stored_chunks(site, session.id)) >= 2, timeout=30,
               what="two chunks stored while recording")

    # When the page is reloaded mid-visit
    page.reload()
    # Then it resumes from the engine's state: what is stored, and continue after it
    page.wait_for_selector("#record:not([disabled])")
    before = stored_chunks(site, session.id)
    assert "interrupted" in status(page) and page.locator("#record").inner_text() == "Continue recording"
    check_accessibility(page)
    page.focus("#record")
    page.keyboard.press("Enter")
    wait_until(lambda: len(stored_chunks(site, session.id)) >= len(before) + 2, timeout=30,
               what="chunks after the reload")
    # When the clinician stops
    page.focus("#stop")
    page.keyboard.press("Enter")
    # Then the recording is one version whose chunks are 1..N with no gap and no repeat
    try:
        page.wait_for_selector("#draft:not([hidden])", timeout=60_000)
    except Exception as exc:
        raise AssertionError(("no draft shown", status(page), page.locator("#problem").inner_text(),
                              site.engine.store.recordings(ORG, session.id),
                              site.engine.store.chunks(ORG, session.id))) from exc
    seqs = stored_chunks(site, session.id)
    assert seqs == list(range(1, len(seqs) + 1)) and len(seqs) >= len(before) + 2
    (rec,) = site.engine.store.recordings(ORG, session.id)
    assert rec.status == "Stopped" and rec.chunk_count == len(seqs)
    assert "draft note is ready" in status(page)
    check_accessibility(page)
    shot(page, f"recorder-draft-{viewport['width']}")

    # When the clinician edits the history and approves
    assert page.locator("label[for='section-10164-2']").inner_text() == "History of present illness"
    area = page.locator("#sections textarea").first
    area.fill("Cough for three days, worse at night. Edited by the clinician.")
    page.focus("#approve")
    page.keyboard.press("Enter")
    # Then every target is written, and the page says so per target
    for target in ("fhir_docref", "hl7_mdm"):
        page.wait_for_selector(f"#write-list li[data-target='{target}'][data-status='written']",
                               timeout=60_000)
    wait_until(lambda: "written to every target" in status(page), what="final status")
    (doc,) = site.fhir.documents(PATIENT)
    assert "Edited by the clinician" in site.fhir.document_text(doc)
    assert doc["context"]["encounter"][0]["reference"] == f"Encounter/{ENCOUNTER}"
    assert len(site.mllp.documents()) == 1
    # And the approval is the launched clinician's, of the edited version
    drafts = site.engine.store.drafts(ORG, session_id=session.id)
    approved = [d for d, state in drafts if state == "approved"]
    assert len(approved) == 1 and approved[0].version == 2
    approval = site.engine.store.approval(ORG, approved[0].id)
    assert approval.approver.value == site.fhir.base_url + "/" + DOCTOR
    assert approval.approver_name == "Dr. Ana Rivera"
    check_accessibility(page)
    shot(page, f"recorder-written-{viewport['width']}")
    # And no identifier or clinical text reached the logs
    logged = "\n".join(r.getMessage() for r in caplog.records)
    for phi in (PATIENT, ENCOUNTER, "Edited by the clinician", "dr-rivera"):
        assert phi not in logged


def test_a_launch_from_an_untrusted_server_or_without_a_visit_is_refused(site, open_page):
    page = open_page(PHONE)
    # When the launch's iss is not the org's FHIR server
    before = len(site.fhir.launch.authorize_requests)
    bad = site.launch_url().replace("iss=http", "iss=https%3A%2F%2Fevil.example%2F%3Fx%3Dhttp")
    page.goto(bad)
    # Then it never leaves the engine
    assert "not trust" in page.locator("#refusal").inner_text()
    assert len(site.fhir.launch.authorize_requests) == before
    # When the EHR launches it without an encounter in context
    page.goto(site.launch_url(encounter=None))
    # Then it refuses in plain words and opens nothing
    assert "open it from the visit" in page.locator("#refusal").inner_text()
    assert site.sessions() == []
    check_accessibility(page)
    # And the page itself needs a launch
    page.context.clear_cookies()
    page.goto(f"{site.url}/orgs/{ORG}/recorder")
    assert "opened from the patient's chart" in page.locator("#refusal").inner_text()


def test_the_page_session_reaches_only_the_launched_visit(site, open_page):
    import httpx
    page = open_page(PHONE)
    page.goto(site.launch_url())
    page.wait_for_selector("#record:not([disabled])")
    boot = page.evaluate("JSON.parse(document.getElementById('recorder-boot').textContent)")
    cookie = {c["name"]: c["value"] for c in page.context.cookies()}
    api = f"{site.url}/orgs/{ORG}/api/v1"
    body = dict(boot["open"], consent={"capture": True, "write_back": True})
    with httpx.Client(cookies=cookie, headers={"X-CSRF-Token": boot["csrf"]}) as http:
        # Without the CSRF token the page session is refused
        no_csrf = http.post(api + "/sessions", json=body,
                            headers={"X-CSRF-Token": "", "Idempotency-Key": "k0"})
        assert no_csrf.status_code == 403
        # A session for another patient is refused
        other = dict(body, patient_ids=[{"value": "someone-else", "type": "FHIR"}])
        assert http.post(api + "/sessions", json=other,
                         headers={"Idempotency-Key": "k1"}).status_code == 403
        # The launched visit opens, and the same visit again is the same session
        first = http.post(api + "/sessions", json=body, headers={"Idempotency-Key": "k2"})
        again = http.post(api + "/sessions", json=body, headers={"Idempotency-Key": "k3"})
        assert first.status_code == 201 and again.json()["id"] == first.json()["id"]


def test_an_id_token_that_does_not_verify_opens_nothing(site, monkeypatch):
    import httpx
    from cryptography.hazmat.primitives.asymmetric import rsa

    from contract_tests.fhir_docref.simulator.launch import SmartLaunch
    # Given an authorization server whose published keys are not the ones it signs with
    other = SmartLaunch(lambda: site.fhir.base_url)
    other._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    other.kid = site.fhir.launch.kid
    monkeypatch.setattr(site.fhir.launch, "jwks", other.jwks)
    # When the EHR launches the recorder (no browser needed: follow the redirects)
    with httpx.Client(follow_redirects=True) as http:
        answer = http.get(site.launch_url())
    # Then the callback refuses, no page session is written and no API session opened
    assert answer.status_code == 403 and "does not verify" in answer.text
    assert "cb_recorder" not in http.cookies
    assert site.sessions() == []


def test_bad_input_is_a_4xx_naming_the_field_never_a_5xx(site):
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    web = site.app.test_client()
    base = f"/orgs/{ORG}/recorder"
    # Given missing launch parameters, a callback from no launch, no page session
    missing = web.get(base + "/launch")
    assert missing.status_code == 400 and "<code>iss</code>" in missing.get_data(as_text=True)
    no_launch = web.get(base + "/launch?iss=" + site.fhir.base_url)
    assert no_launch.status_code == 400 and "<code>launch</code>" in no_launch.get_data(as_text=True)
    stray = web.get(base + "/callback?state=x&code=y")
    assert stray.status_code == 400 and "<code>state</code>" in stray.get_data(as_text=True)
    assert web.get(base).status_code == 401
    assert web.post(base + "/session", json={"session_id": "x"}).status_code == 403
    # An org without a recorder, and an API call with a forged page-session cookie
    assert web.get("/orgs/no-such-org/recorder/launch?iss=a&launch=b").status_code == 404
    web.set_cookie("cb_recorder", "forged", path=f"/orgs/{ORG}")
    forged = web.get(f"/orgs/{ORG}/api/v1/sessions/abc", headers={"X-CSRF-Token": "t"})
    assert forged.status_code == 401 and forged.json["error"] == "unauthorized"

    text = st.text(max_size=40)

    @settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
    @given(path=st.sampled_from(["/launch", "/callback", "", "/session"]),
           args=st.dictionaries(st.sampled_from(["iss", "launch", "state", "code", "error"]), text),
           post=st.booleans(), body=st.binary(max_size=200))
    def fuzz(path, args, post, body):
        call = web.post if post else web.get
        answer = call(base + path, query_string=args, data=body,
                      headers={"Content-Type": "application/json"})
        assert answer.status_code < 500, (path, args, answer.status_code)
    fuzz()


def test_chunks_the_server_never_got_are_sent_after_a_reload(site, open_page):
    page = open_page(PHONE)
    page.goto(site.launch_url())
    page.wait_for_selector("#record:not([disabled])")
    # Given a network that drops every chunk upload while the clinician records
    dropped = re.compile(r"/recordings/\d+/chunks/\d+$")
    page.route(dropped, lambda route: route.abort())
    page.check("#consent-capture")
    page.check("#consent-write")
    page.click("#record")
    (session,) = wait_until(site.sessions, what="the API session opened")
    kept = """() => new Promise((ok) => { const r = indexedDB.open("chartbridge-recorder", 1);
        r.onsuccess = () => { const q = r.result.transaction("chunks").objectStore("chunks").count();
                              q.onsuccess = () => ok(q.result); }; })"""
    wait_until(lambda: page.evaluate(kept) >= 2, timeout=30, what="two chunks kept in the browser")
    assert stored_chunks(site, session.id) == []
    # When the network is back and the tab is reopened
    page.unroute(dropped)
    page.reload()
    # Then what the browser kept is sent, and it continues after it
    wait_until(lambda: len(stored_chunks(site, session.id)) >= 2, timeout=30,
               what="the kept chunks stored")
    page.wait_for_selector("#record:not([disabled])")
    seqs = stored_chunks(site, session.id)
    assert seqs == list(range(1, len(seqs) + 1))
    assert page.locator("#record").inner_text() == "Continue recording"
    wait_until(lambda: page.evaluate(kept) == 0, what="nothing left in the browser")


# -- the page session's identity, hostile bodies, the authorization server ---------------------
def _boot(html: str) -> dict:
    import json
    return json.loads(re.search(r'id="recorder-boot">(.*?)</script>', html, re.S).group(1))


def _launch_over_http(site, http, *, iss: str | None = None):
    """A launch followed through the simulator's redirects (no browser): the page's boot."""
    from urllib.parse import quote
    url = site.launch_url()
    if iss is not None:
        url = url.replace("iss=" + quote(site.fhir.base_url, safe=""), "iss=" + quote(iss, safe=""))
    page = http.get(url)
    assert page.status_code == 200, page.text[:500]
    return _boot(page.text)


def _open(http, site, boot, key):
    body = dict(boot["open"], consent={"capture": True, "write_back": True})
    return http.post(f"{site.url}/orgs/{ORG}/api/v1/sessions", json=body,
                     headers={"X-CSRF-Token": boot["csrf"], "Idempotency-Key": key})


def test_a_relaunch_after_a_key_rotation_with_another_iss_spelling_resumes_the_session(tmp_path):
    import httpx
    # Given an org file naming its authorization server (the one discovery names)
    site = Site(tmp_path, f"sqlite:///{tmp_path / 'engine.db'}",
                recorder=lambda fhir: {"authorization_server": fhir.launch.issuer})
    try:
        with httpx.Client(follow_redirects=True) as http:
            boot = _launch_over_http(site, http)
            first = _open(http, site, boot, "k1")
        assert first.status_code == 201, first.text
        # Then the identifiers name the normalized FHIR base, the clinician its issuer
        assert {i["system"] for i in boot["open"]["patient_ids"] + boot["open"]["encounter_ids"]} \
            == {site.fhir.base_url.rstrip("/")}
        assert boot["open"]["user"] == {"value": site.fhir.base_url + "/" + DOCTOR,
                                        "type": "fhirUser", "system": site.fhir.launch.issuer}
        # When the process's secret key changes (a restart without one, or a rotation) and
        # the EHR relaunches the same visit spelling iss with a trailing slash
        site.app.secret_key = "another-process-" + "x" * 32
        with httpx.Client(follow_redirects=True) as http:
            again = _launch_over_http(site, http, iss=site.fhir.base_url + "/")
            second = _open(http, site, again, "k2")
        # Then it is the same session: one visit, one note
        assert again["open"]["external_id"] == boot["open"]["external_id"]
        assert second.status_code == 200 and second.json()["id"] == first.json()["id"]
        assert len(site.sessions()) == 1
    finally:
        site.stop()


def test_a_discovery_naming_another_authorization_server_is_refused(tmp_path):
    import httpx
    site = Site(tmp_path, f"sqlite:///{tmp_path / 'engine.db'}",
                recorder=lambda fhir: {"authorization_server": "https://auth.example.org/oauth2"})
    try:
        with httpx.Client(follow_redirects=True) as http:
            answer = http.get(site.launch_url())
        # Then the browser is never sent to the discovered authorization server
        assert answer.status_code == 403 and "another authorization server" in answer.text
        assert site.fhir.launch.authorize_requests == []
        assert "cb_recorder" not in http.cookies and site.sessions() == []
    finally:
        site.stop()


def test_of_launch_compares_system_value_and_clinician():
    from types import SimpleNamespace

    from chartbridge.core.models import Identifier, SessionSource
    from chartbridge.recorder.views import _of_launch

    base = "https://fhir.example.org/r4"
    data = {"iss": base + "/", "fhir_base": base, "patient": "p1", "encounter": "e1",
            "person": {"value": base + "/Practitioner/a", "type": "fhirUser",
                       "system": "https://fhir.example.org/oauth2"}}

    def session(system=base, user=None):
        return SimpleNamespace(
            source=SessionSource.API,
            patient_ids=[Identifier(value="p1", type="FHIR", system=system)],
            encounter_ids=[Identifier(value="e1", type="FHIR", system=system)],
            user=user or Identifier(**data["person"]))
    assert _of_launch(session(), data)
    assert _of_launch(session(system=base + "/"), data)                # a spelling only
    assert not _of_launch(session(system="https://other.example.org/r4"), data)
    assert not _of_launch(session(user=Identifier(value=data["person"]["value"],
                                                  type="fhirUser", system="https://evil")), data)
    assert not _of_launch(session(user=Identifier(value="someone-else", type="fhirUser",
                                                  system=data["person"]["system"])), data)


def test_hostile_session_bodies_with_a_valid_page_session_are_4xx_never_5xx(site):
    import httpx
    from hypothesis import HealthCheck, example, given, settings
    from hypothesis import strategies as st

    with httpx.Client(follow_redirects=True) as http:
        boot = _launch_over_http(site, http)
        cookie = http.cookies.get("cb_recorder")
    web = site.app.test_client()
    web.set_cookie("cb_recorder", cookie, path=f"/orgs/{ORG}")
    url = f"/orgs/{ORG}/api/v1/sessions"
    n = iter(range(10**6))

    def post(body):
        return web.post(url, json=body, headers={"X-CSRF-Token": boot["csrf"],
                                                 "Idempotency-Key": f"fuzz-{next(n)}"})
    # The reviewer's two: a number where a list is, a list where a string is
    for bad, field in (({"patient_ids": 5}, "patient_ids"),
                       ({"patient_ids": [{"type": "FHIR", "value": [1]}]},
                        "patient_ids[0].value")):
        answer = post(dict(boot["open"], **bad))
        assert 400 <= answer.status_code < 500 and answer.json["field"] == field, answer.json

    scalar = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8)
    value = st.recursive(scalar, lambda inner: st.lists(inner, max_size=3)
                         | st.dictionaries(st.sampled_from(["value", "type", "system", "x"]),
                                           inner, max_size=3), max_leaves=8)
    ident = st.fixed_dictionaries({}, optional={"value": value, "type": st.just("FHIR") | value,
                                                "system": value})

    @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
    @given(body=st.fixed_dictionaries({}, optional={
        "patient_ids": value | st.lists(ident, max_size=3),
        "encounter_ids": value | st.lists(ident, max_size=3),
        "user": value | ident, "external_id": value, "consent": value}) | value)
    @example(body={"patient_ids": 5})
    @example(body={"patient_ids": [{"type": "FHIR", "value": [1]}]})
    @example(body={"user": [1]})
    def fuzz(body):
        answer = post(body if not isinstance(body, dict) else dict(boot["open"], **body))
        assert answer.status_code < 500, (body, answer.status_code, answer.get_data()[:300])
        if answer.status_code >= 400:
            assert answer.is_json and answer.json.get("error")
    fuzz()


def test_stop_resends_what_the_browser_kept_and_refuses_while_a_part_is_missing(site, open_page):
    page = open_page(PHONE)
    page.goto(site.launch_url())
    page.wait_for_selector("#record:not([disabled])")
    # Given the server refuses part 2 (a 422: the browser gives up on it and keeps it)
    second = re.compile(r"/recordings/1/chunks/2$")
    page.route(second, lambda route: route.fulfill(
        status=422, content_type="application/json",
        body='{"error": "invalid_field", "detail": "refused by the test"}'))
    page.check("#consent-capture")
    page.check("#consent-write")
    page.click("#record")
    (session,) = wait_until(site.sessions, what="the API session opened")
    wait_until(lambda: len(stored_chunks(site, session.id)) >= 2, timeout=30,
               what="parts after the refused one")
    assert 2 not in stored_chunks(site, session.id)
    # When the clinician stops while part 2 is still refused
    page.click("#stop")
    # Then the page refuses to stop, visibly, naming the missing part; nothing is announced
    page.wait_for_selector("#problem:not([hidden])")
    wait_until(lambda: "cannot be stopped yet" in page.locator("#problem").inner_text(),
               what="the refusal to stop")
    assert "part(s) 2 " in page.locator("#problem").inner_text()
    assert all(r.status != "Stopped" for r in site.engine.store.recordings(ORG, session.id))
    page.wait_for_selector("#stop:not([disabled])")
    # When the server takes it again and the clinician presses Stop again
    page.unroute(second)
    page.click("#stop")
    # Then what IndexedDB held is sent first, and the recording is stopped with no gap
    page.wait_for_selector("#draft:not([hidden])", timeout=60_000)
    seqs = stored_chunks(site, session.id)
    assert seqs == list(range(1, len(seqs) + 1))
    (rec,) = site.engine.store.recordings(ORG, session.id)
    assert rec.status == "Stopped" and rec.chunk_count == len(seqs)


def test_in_flight_is_retried_and_unticked_consent_is_null_under_assumed(tmp_path, open_page):
    import json
    # Given an org that assumes consent
    site = Site(tmp_path, f"sqlite:///{tmp_path / 'engine.db'}",
                policy={"consent": {"capture": "assumed", "write_back": "assumed"}})
    try:
        page = open_page(PHONE)
        page.goto(site.launch_url())
        page.wait_for_selector("#record:not([disabled])")
        sent = []

        def once_in_flight(route):
            # the API's answer while the same key's first request is still running
            sent.append(json.loads(route.request.post_data))
            if len(sent) == 1:
                route.fulfill(status=409, content_type="application/json",
                              body='{"error": "idempotency_key_in_flight", "detail": "busy"}')
            else:
                route.continue_()
        page.route(re.compile(r"/api/v1/sessions$"), once_in_flight)
        # When the clinician records without ticking a box
        page.click("#record")
        # Then the page retried the in-flight answer and opened the visit
        # (waiting in Playwright, which runs the route handler meanwhile)
        page.wait_for_selector("#record.recording", timeout=30_000)
        (session,) = site.sessions()
        assert len(sent) == 2 and page.locator("#problem").is_hidden()
        # and an unticked box was "not recorded" (null), not a refusal (false)
        assert sent[0]["consent"] == {"capture": None, "write_back": None}
        assert site.engine.store.consents(ORG, session.id) == {}
    finally:
        site.stop()


def _fake_session(sid, *, recordings, chunks, drafts=(), writes=()):
    return {"id": sid, "external_id": "x", "status": "open",
            "user": {"value": "u", "type": "fhirUser"}, "patient_ids": [], "encounter_ids": [],
            "sections": [], "created_at": "2026-01-01T00:00:00Z", "recordings": recordings,
            "chunks": chunks, "drafts": list(drafts), "writes": list(writes)}


def test_a_draft_or_a_write_that_never_comes_is_shown_with_its_reason(site, open_page):
    import json

    import httpx
    site.app.config["RECORDER_WAITS_MS"] = {"draft_wait_ms": 3000, "no_writes_ms": 1500}
    page = open_page(PHONE)
    page.goto(site.launch_url())
    page.wait_for_selector("#record:not([disabled])")
    boot = page.evaluate("JSON.parse(document.getElementById('recorder-boot').textContent)")
    cookie = {c["name"]: c["value"] for c in page.context.cookies()}
    with httpx.Client(cookies=cookie, headers={"X-CSRF-Token": boot["csrf"]}) as http:
        opened = _open(http, site, boot, "k-stuck")
        sid = opened.json()["id"]
        assert http.post(f"{site.url}/orgs/{ORG}/recorder/session",
                         json={"session_id": sid}).status_code == 204
    # Given the engine says: stopped with 3 parts, but part 2 never arrived
    state = {"s": _fake_session(sid, recordings=[
        {"version": 1, "chunk_count": 3, "status": "Stopped", "state": "receiving"}],
        chunks=[{"recording_version": 1, "sequence": q, "state": "stored"} for q in (1, 3)])}
    page.route(re.compile(rf"/api/v1/sessions/{sid}$"), lambda route: route.fulfill(
        status=200, content_type="application/json", body=json.dumps(state["s"])))
    page.reload()
    # Then the page does not say "being drafted" for ever: it names what is missing
    page.wait_for_selector("#problem:not([hidden])", timeout=20_000)
    assert "has not been drafted" in page.locator("#problem").inner_text()
    assert "part(s) 2" in page.locator("#problem").inner_text()
    # Given an approved draft with no write scheduled (a reload after approval)
    state["s"] = _fake_session(sid, recordings=[
        {"version": 1, "chunk_count": 1, "status": "Stopped", "state": "drafted"}],
        chunks=[{"recording_version": 1, "sequence": 1, "state": "stored"}],
        drafts=[{"version": 1, "state": "approved", "content_hash": "0" * 64}])
    page.route(re.compile(rf"/api/v1/sessions/{sid}/drafts/1$"), lambda route: route.fulfill(
        status=200, content_type="application/json", body=json.dumps({
            "version": 1, "state": "approved", "content_hash": "0" * 64,
            "sections": [{"code": "10164-2", "title": "History", "text": "t"}]})))
    page.route(re.compile(rf"/api/v1/sessions/{sid}/writes$"), lambda route: route.fulfill(
        status=200, content_type="application/json",
        body=json.dumps({"session_id": sid, "writes": []})))
    page.reload()
    # Then it says why nothing is being written instead of polling an empty list for ever
    wait_until(lambda: "no write to the record was scheduled"
               in page.locator("#problem").inner_text(), timeout=20, what="the no-writes reason")
    assert "nothing is being sent" in status(page)
