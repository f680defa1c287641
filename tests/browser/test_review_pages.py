"""Review and approve in real Chromium: dev sign-in for a demo org, the list of drafts
awaiting review, a draft with its transcript excerpts and audio times, an edit (a new draft
version), approval bound to that version's content hash, and the write status per target
updating live. The two targets' adapters are fakes registered for the test: one writes
(returning an EHR id), one refuses with a permanent error."""
from __future__ import annotations

import dataclasses
import threading
import uuid

import pytest
import yaml

from chartbridge import runtime
from chartbridge.adapters.registry import registry
from chartbridge.bootstrap import bootstrap
from chartbridge.core.errors import PermanentError
from chartbridge.core.models import WriteOutcome
from chartbridge.web import create_app

from .a11y import check_accessibility
from .seed import seed_draft
from .conftest import PHONE, REPO_CONFIG, shot, wait_until

pytestmark = pytest.mark.browser
ORG = "demo-review"


class WritingAdapter:
    name = "hl7_mdm"

    def __init__(self):
        self.sent = []
        self.lock = threading.Lock()

    def send(self, command):
        with self.lock:
            self.sent.append(command)
            return WriteOutcome(external_id=f"MDM-{command.note_version}-{len(self.sent)}")

    def reconcile(self, command):
        return None


class RefusingAdapter:
    name = "athenaone"

    def send(self, command):
        raise PermanentError("the practice refused the document: department is closed",
                             status=400)

    def reconcile(self, command):
        return None


@pytest.fixture
def review(tmp_path, monkeypatch):
    """An engine (SQLite, in-process worker) serving the pages, with one seeded draft."""
    monkeypatch.setenv("CHARTBRIDGE_DEV_LOGIN", "1")
    orgs = tmp_path / "orgs"
    orgs.mkdir()
    doc = yaml.safe_load((REPO_CONFIG / "demo-multi.yaml").read_text())
    doc["org"], doc["name"] = ORG, "Demo Review Clinic"
    doc["targets"] = {k: v for k, v in doc["targets"].items() if k in ("hl7_mdm", "athenaone")}
    doc["policy"]["consent"] = {"capture": "assumed", "write_back": "assumed"}
    (orgs / f"{ORG}.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    other = dict(doc, org="demo-other", name="Other Clinic")
    (orgs / "demo-other.yaml").write_text(yaml.safe_dump(other, sort_keys=False))

    writer = WritingAdapter()
    registry.names()
    monkeypatch.setitem(registry._specs, "hl7_mdm", dataclasses.replace(
        registry.get("hl7_mdm"), factory=lambda org, settings, services: writer))
    monkeypatch.setitem(registry._specs, "athenaone", dataclasses.replace(
        registry.get("athenaone"), factory=lambda org, settings, services: RefusingAdapter()))

    engine = bootstrap(database_url=f"sqlite:///{tmp_path / 'engine.db'}", config_dir=orgs)
    rt = runtime.start(engine, in_process_worker=True, sweep_interval_s=0.5,
                       queue=f"review-{uuid.uuid4().hex[:8]}")
    from waitress.server import create_server
    app = create_app(engine, jobs=rt.jobs)
    server = create_server(app, host="127.0.0.1", port=0, threads=6)
    threading.Thread(target=server.run, daemon=True).start()
    base = f"http://127.0.0.1:{server.effective_port}"
    app.config["CHARTBRIDGE_PUBLIC_URL"] = base
    try:
        yield type("Review", (), {"engine": engine, "base": base, "writer": writer,
                                  "draft": seed_draft(engine, ORG),
                                  "other_draft": seed_draft(engine, "demo-other")})
    finally:
        server.close()
        rt.stop()
        engine.db.dispose()


def sign_in(page, base, org=ORG, user="dr.rivera"):
    page.goto(f"{base}/orgs/{org}/review/")
    page.wait_for_url(f"**/orgs/{org}/review/login")
    page.get_by_label("User id").fill(user)
    page.get_by_label("Name shown on approvals").fill("Dr Rivera")
    page.get_by_label("Role").select_option("physician")
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(f"**/orgs/{org}/review/")


def test_review_edit_approve_written(review, new_page, viewport):
    name = "phone" if viewport == PHONE else "desktop"
    page = new_page(viewport)
    engine, draft = review.engine, review.draft
    # Given a clinician signed in with the demo org's development login
    page.goto(f"{review.base}/orgs/{ORG}/review/")
    page.wait_for_url("**/review/login")
    check_accessibility(page)
    shot(page, f"review-login-{name}")
    sign_in(page, review.base)
    # When they open the list, the draft awaiting review is there (and only their org's)
    items = page.locator("#drafts li")
    assert items.count() == 1 and items.first.get_attribute("data-draft") == draft.id
    check_accessibility(page)
    shot(page, f"review-list-{name}")
    items.first.locator("a").click()
    # Then each section shows its transcript excerpt and audio time
    hpi = page.locator("section[data-section='10164-2']")
    assert "The cough started three days ago." in hpi.inner_text()
    assert "at 0:03–0:07" in hpi.inner_text()
    assert "at 1:05–1:09" in page.locator("section[data-section='51848-0']").inner_text()
    # And a term the traceability checker could not find in the cited transcript is flagged
    assert page.locator("section[data-section='51848-0'] [role=alert]").inner_text() == (
        "Not in the transcript it cites: azithromycin. Check before approving.")
    assert hpi.locator("[role=alert]").count() == 0
    check_accessibility(page)
    shot(page, f"review-draft-{name}")
    # When they edit the history section
    hpi.locator("summary").click()
    hpi.get_by_label("New text for History of present illness").fill(
        "Dry cough for three days, no fever.")
    hpi.get_by_role("button", name="Save edit").click()
    page.wait_for_url("**notice=edited**")
    # Then a new draft version holds the edit and the old one is superseded
    (v2, v2_state), (v1, v1_state) = engine.store.drafts(ORG, session_id=draft.session_id)[:2]
    assert (v2.version, v2_state, v1_state) == (2, "draft", "superseded")
    assert v2.section("10164-2").text == "Dry cough for three days, no fever."
    assert v2.edited_by == "dr.rivera" and f"/drafts/{v2.id}" in page.url
    assert "Dry cough for three days" in page.locator("section[data-section='10164-2']").inner_text()
    # When they approve
    page.get_by_role("button", name="Approve and write").click()
    page.wait_for_url("**notice=approved**")
    # Then the approval binds to the edited version's exact content
    approval = engine.store.approval(ORG, v2.id)
    assert approval.content_hash == v2.content_hash() and approval.approver.value == "dr.rivera"
    # And the write status updates live: one target written with its EHR id, one failed
    written = page.wait_for_selector("tr[data-target='hl7_mdm'][data-status='succeeded']",
                                     timeout=30_000)
    assert "EHR id MDM-2-1" in written.inner_text()
    failed = page.wait_for_selector("tr[data-target='athenaone'][data-status='failed']",
                                    timeout=30_000)
    assert "department is closed" in failed.inner_text()
    (sent,) = review.writer.sent
    assert sent.draft.id == v2.id and sent.approval.content_hash == v2.content_hash()
    # And every view and action is in the audit trail under the clinician
    actions = [(e.action, e.actor) for e in engine.store.audit_trail(ORG, draft.session_id)]
    for action in ("review.draft_viewed", "review.section_edited", "draft.approved"):
        assert (action, "user:dr.rivera") in actions, action
    assert ("review.signed_in", "user:dr.rivera") in [(e.action, e.actor)
                                                     for e in engine.store.audit_trail(ORG)]
    check_accessibility(page)
    shot(page, f"review-written-{name}")


def test_reject_needs_a_reason_and_a_stale_version_cannot_be_approved(review, new_page, browser):
    page = new_page(PHONE)
    sign_in(page, review.base)
    draft = review.draft
    page.goto(f"{review.base}/orgs/{ORG}/review/drafts/{draft.id}")
    # When they reject without a reason
    page.get_by_role("button", name="Reject").click()
    # Then the page says which field is missing, and nothing was decided
    assert page.locator("#error-field").inner_text() == "reason"
    assert review.engine.store.get_draft(ORG, draft.id)[1] == "draft"
    # Given the same draft open in a second tab, and an edit saved in the first
    page.goto(f"{review.base}/orgs/{ORG}/review/drafts/{draft.id}")
    stale = page.context.new_page()
    stale.goto(page.url)
    page.locator("section[data-section='51848-0'] summary").click()
    page.get_by_label("New text for Assessment").fill("Acute bronchitis.")
    page.get_by_role("button", name="Save edit").click()
    page.wait_for_url("**notice=edited**")
    # When the stale tab approves what it shows
    stale.get_by_role("button", name="Approve and write").click()
    # Then it is refused: the approval can only bind to the newest content
    assert "superseded" in stale.locator("#error-message").inner_text()
    assert review.engine.store.approval(ORG, draft.id) is None
    assert review.writer.sent == []


def test_csrf_org_scope_and_dev_login_gate(review, new_page, monkeypatch):
    page = new_page(PHONE)
    sign_in(page, review.base)
    draft = review.draft
    # A POST without the session's CSRF token changes nothing
    resp = page.request.post(f"{review.base}/orgs/{ORG}/review/drafts/{draft.id}/decision",
                             form={"decision": "approved", "content_hash": draft.content_hash()})
    assert resp.status == 400 and "csrf_token" in resp.text()
    assert review.engine.store.approval(ORG, draft.id) is None
    # Another org's draft is not found through this org's pages
    page.goto(f"{review.base}/orgs/{ORG}/review/drafts/{review.other_draft.id}")
    assert "no such draft" in page.locator("#error-message").inner_text()
    # And this org's sign-in does not open the other org's pages
    page.goto(f"{review.base}/orgs/demo-other/review/")
    page.wait_for_url("**/orgs/demo-other/review/login")
    # The development login is off unless CHARTBRIDGE_DEV_LOGIN=1
    monkeypatch.delenv("CHARTBRIDGE_DEV_LOGIN")
    page.goto(f"{review.base}/orgs/demo-other/review/login")
    assert "no sign-in is configured" in page.locator("#error-message").inner_text()


class FakeIdP:
    """A minimal OpenID provider on loopback (authorization code + PKCE), for the test."""

    def __init__(self):
        import time
        from flask import Flask, jsonify, redirect, request
        from joserfc import jwt
        from joserfc.jwk import RSAKey
        from werkzeug.serving import make_server

        from contract_tests.epic_haiku.smart import s256

        self.key = RSAKey.generate_key(2048, private=True)
        self.key.ensure_kid()
        self.codes, self.tamper = {}, {}
        app = Flask("fake-idp")

        @app.get("/.well-known/openid-configuration")
        def conf():
            return jsonify(issuer=self.issuer, authorization_endpoint=self.issuer + "/authorize",
                           token_endpoint=self.issuer + "/token", jwks_uri=self.issuer + "/jwks")

        @app.get("/jwks")
        def jwks():
            return jsonify(keys=[self.key.as_dict(private=False)])

        @app.get("/authorize")
        def authorize():
            a = request.args
            assert a["code_challenge_method"] == "S256" and a["nonce"] and a["state"]
            code = uuid.uuid4().hex
            self.codes[code] = dict(a)
            return redirect(f"{a['redirect_uri']}?code={code}&state={a['state']}")

        @app.post("/token")
        def token():
            f = request.form
            req = self.codes.pop(f["code"])
            if s256(f["code_verifier"]) != req["code_challenge"]:
                return jsonify(error="invalid_grant"), 400
            now = int(time.time())
            claims = {"iss": self.issuer, "sub": "clin-42", "aud": req["client_id"],
                      "iat": now, "exp": now + 300, "nonce": req["nonce"],
                      "name": "Dr Okafor", "role": "physician", **self.tamper}
            idt = jwt.encode({"alg": "RS256", "kid": self.key.kid}, claims, self.key)
            return jsonify(access_token="at", token_type="Bearer", id_token=idt, expires_in=300)

        self.server = make_server("127.0.0.1", 0, app, threaded=True)
        self.issuer = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()


@pytest.mark.parametrize("configured_in", ["org_file", "environment"])
def test_oidc_sign_in_from_the_org_identity_provider(review, new_page, monkeypatch, configured_in):
    idp = FakeIdP()
    try:
        # Given the org's identity provider configured (and the dev login off): in the org
        # file's sign_in.oidc block, or by the older per-org environment variables
        monkeypatch.delenv("CHARTBRIDGE_DEV_LOGIN")
        if configured_in == "org_file":
            path = review.engine.config_dir / f"{ORG}.yaml"
            doc = yaml.safe_load(path.read_text())
            doc["sign_in"] = {"oidc": {"issuer": idp.issuer, "client_id": "review-pages"}}
            path.write_text(yaml.safe_dump(doc, sort_keys=False))
        else:
            monkeypatch.setenv("CHARTBRIDGE_OIDC_DEMO_REVIEW_ISSUER", idp.issuer)
            monkeypatch.setenv("CHARTBRIDGE_OIDC_DEMO_REVIEW_CLIENT_ID", "review-pages")
        page = new_page(PHONE)
        # When the clinician opens the pages
        page.goto(f"{review.base}/orgs/{ORG}/review/")
        # Then they are signed in by the provider, as the ID token's subject and role
        page.wait_for_url(f"**/orgs/{ORG}/review/")
        assert "Dr Okafor" in page.locator("header.top").inner_text()
        assert page.locator("#drafts li").count() == 1
        trail = [(e.action, e.actor, e.detail.get("method"))
                 for e in review.engine.store.audit_trail(ORG)]
        assert ("review.signed_in", "user:clin-42", "oidc") in trail
        # And an ID token for another sign-in (wrong nonce) is refused
        other = new_page(PHONE)
        idp.tamper = {"nonce": "not-this-sign-in"}
        other.goto(f"{review.base}/orgs/{ORG}/review/login")
        assert "nonce" in other.locator("#error-message").inner_text()
        assert other.locator("header.top").count() == 0
    finally:
        idp.close()
