"""The operator console over HTTP (Flask's test client, no browser): sign-in bound to one
org, the role claim, the PHI-view gate and its audit, CSRF on every repair, and a second
org's operator refused every page and every action of the first."""
from __future__ import annotations

import re

import pytest

from chartbridge.core.models import WriteStatus
from chartbridge.ops import access
from chartbridge.web import create_app
from tests.ops.site import Site

ORG, OTHER = "demo-ops", "demo-ops-other"
CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


@pytest.fixture
def console(tmp_path, monkeypatch):
    monkeypatch.setenv("CHARTBRIDGE_DEV_LOGIN", "1")
    site = Site(tmp_path, f"sqlite:///{tmp_path / 'engine.db'}", orgs=(ORG, OTHER))
    app = create_app(site.engine, jobs=site.jobs, public_url="http://localhost")
    site.app = app
    yield site
    site.close()


def sign_in(app, org, role="operator", user="ops.jane"):
    client = app.test_client()
    page = client.get(f"/ops/orgs/{org}/login")
    assert page.status_code == 200
    token = CSRF.search(page.text).group(1)
    resp = client.post(f"/ops/orgs/{org}/login",
                       data={"csrf_token": token, "user_id": user, "role": role})
    assert resp.status_code == 303
    assert resp.headers["Location"].endswith(f"/ops/orgs/{org}/sessions")
    return client


def csrf_of(client, org):
    return CSRF.search(client.get(f"/ops/orgs/{org}/writes").text).group(1)


def failed_write(site):
    return site.write_with_fault(ORG, 422)


def audited(site, org, action):
    from chartbridge.ledger.repairs import audit_search
    return audit_search(site.engine.db, org, action=action)


def test_role_claim_names_the_org():
    assert access.grants_for("operator:demo-a", "demo-a") == ("view",)
    assert access.grants_for('["operator-phi:demo-a", "operator:demo-b"]', "demo-a") == (
        "view", "phi")
    assert access.grants_for("operator:demo-a,operator:demo-b", "demo-b") == ("view",)
    for role, org in (("operator", "demo-a"), ("operator:demo-ab", "demo-a"),
                      ("xoperator:demo-a", "demo-a"), ("operator:demo-b", "demo-a"), (None, "x")):
        assert access.grants_for(role, org) == (), role
    # a role claim cut at 64 characters may end in a shortened org name: it grants nothing
    cut = ("x" * 48 + " operator:demo-ab")[:64]
    assert len(cut) == 64 and cut.endswith("operator:demo-a")
    assert access.grants_for(cut, "demo-a") == ()
    assert access.grants_for("x" * 40 + " operator:demo-a, y", "demo-a") == ("view",)


def test_every_page_renders_with_the_csp_and_stuck_sessions_are_flagged(console):
    key = failed_write(console)
    s = console.open_session(ORG)                     # announced, never transcribed
    client = sign_in(console.app, ORG)
    for path in ("sessions", "sessions?state=stuck&stuck_after_s=0", f"sessions/{s.id}",
                 "writes", "writes?status=failed", f"write?key={key}", "health", "audit",
                 "audit?action=write.&actor=system"):
        resp = client.get(f"/ops/orgs/{ORG}/{path}")
        assert resp.status_code == 200, (path, resp.text[:500])
        assert "script-src 'nonce-" in resp.headers["Content-Security-Policy"]
        assert resp.headers["Cache-Control"] == "no-store"
    stuck = client.get(f"/ops/orgs/{ORG}/sessions?state=stuck&stuck_after_s=0").text
    assert f'data-session="{s.id}" data-stuck="yes"' in stuck
    assert "chunk R1#1 announced, not transcribed" in stuck
    assert f'data-session="{s.id}"' not in client.get(
        f"/ops/orgs/{ORG}/sessions?state=stuck&stuck_after_s=3600").text
    assert "Never run" in client.get(f"/ops/orgs/{ORG}/health").text
    bad = client.get(f"/ops/orgs/{ORG}/sessions?state=weird")
    assert bad.status_code == 400 and 'id="error-field">state<' in bad.text


def test_payload_needs_the_phi_role_and_every_view_is_audited(console):
    key = failed_write(console)
    plain = sign_in(console.app, ORG)
    page = plain.get(f"/ops/orgs/{ORG}/write?key={key}").text
    assert 'id="no-phi"' in page and "payload-command" not in page
    refused = plain.get(f"/ops/orgs/{ORG}/write?key={key}&show=payload")
    assert refused.status_code == 403 and "Z1" not in refused.text
    assert [e.actor for e in audited(console, ORG, "ops.payload_refused")] == ["user:ops.jane"]
    phi = sign_in(console.app, ORG, role="operator-phi", user="ops.phi")
    assert 'id="show-payload"' in phi.get(f"/ops/orgs/{ORG}/write?key={key}").text
    shown = phi.get(f"/ops/orgs/{ORG}/write?key={key}&show=payload")
    assert shown.status_code == 200 and 'id="payload-command"' in shown.text
    assert "DocumentReference" in shown.text and "&#34;status&#34;: 422" in shown.text
    (viewed,) = audited(console, ORG, "ops.payload_viewed")
    assert viewed.actor == "user:ops.phi" and viewed.detail["key"] == key


def test_repairs_need_the_form_token_and_are_audited_under_the_operator(console):
    key = failed_write(console)
    client = sign_in(console.app, ORG)
    # Without the form's token: refused, nothing changed
    resp = client.post(f"/ops/orgs/{ORG}/repair",
                       data={"action": "requeue", "key": key, "reason": "fixed"})
    assert resp.status_code == 403
    assert console.engine.ledger.get(ORG, key).status == WriteStatus.FAILED
    token = csrf_of(client, ORG)
    # Without a reason: the page names the field
    resp = client.post(f"/ops/orgs/{ORG}/repair", data={
        "csrf_token": token, "action": "requeue", "key": key, "reason": ""})
    assert resp.status_code == 400 and 'id="error-field">reason<' in resp.text
    # With both: requeued, enqueued, back where it came from with a notice
    resp = client.post(f"/ops/orgs/{ORG}/repair", data={
        "csrf_token": token, "action": "requeue", "key": key, "reason": "validator fixed",
        "next": f"/ops/orgs/{ORG}/write?key={key}"})
    assert resp.status_code == 303 and resp.headers["Location"].endswith("notice=requeued")
    assert console.jobs.pending == [("execute_write", (ORG, key))]
    console.drain()
    assert console.engine.ledger.get(ORG, key).status == WriteStatus.SUCCEEDED
    assert len(console.documents()) == 1
    (entry,) = audited(console, ORG, "write.requeued")
    assert (entry.actor, entry.detail["reason"]) == ("user:ops.jane", "validator fixed")
    # A redirect target outside the org's console is not followed
    resp = client.post(f"/ops/orgs/{ORG}/repair", data={
        "csrf_token": token, "action": "cancel", "key": key, "reason": "x",
        "next": "https://evil.example/"})
    assert resp.status_code == 409                     # succeeded: not cancellable


def test_audit_export_is_a_bundle_of_fhir_audit_events(console):
    failed_write(console)
    client = sign_in(console.app, ORG)
    resp = client.get(f"/ops/orgs/{ORG}/audit/export.json?action=write.")
    assert resp.status_code == 200 and resp.headers["Content-Type"] == "application/fhir+json"
    bundle = resp.get_json(force=True)
    assert bundle["resourceType"] == "Bundle" and bundle["total"] >= 2
    assert {e["resource"]["resourceType"] for e in bundle["entry"]} == {"AuditEvent"}
    codes = {e["resource"]["subtype"][0]["code"] for e in bundle["entry"]}
    assert "write.failed" in codes and all(c.startswith("write.") for c in codes)
    assert audited(console, ORG, "ops.audit_exported")


def test_a_second_orgs_operator_is_refused_every_page_and_action_of_the_first(console):
    key = failed_write(console)
    s = console.open_session(ORG)
    other = sign_in(console.app, OTHER, role="operator-phi", user="ops.other")
    token = csrf_of(other, OTHER)
    # Every page of the first org sends them to its sign-in, showing nothing
    for path in ("", "sessions", f"sessions/{s.id}", "writes", f"write?key={key}",
                 f"write?key={key}&show=payload", "health", "audit", "audit/export.json"):
        resp = other.get(f"/ops/orgs/{ORG}/{path}")
        assert resp.status_code in (303, 302), path
        assert resp.headers["Location"].endswith(f"/ops/orgs/{ORG}/login") or path == ""
        assert s.id not in resp.text and key not in resp.text
    # Even with their session cookie sent on the first org's path
    cookie = other.get_cookie("cb_ops", path=f"/ops/orgs/{OTHER}/")
    thief = console.app.test_client()
    thief.set_cookie("cb_ops", cookie.value, path=f"/ops/orgs/{ORG}/")
    assert thief.get(f"/ops/orgs/{ORG}/writes").status_code == 303
    # Every action of the first org is refused, and nothing changes
    forms = [{"action": "requeue", "key": key}, {"action": "cancel", "key": key},
             {"action": "resolve", "key": key, "how": "resend"},
             {"action": "redrive_chunk", "session_id": s.id, "recording_id": "R1",
              "sequence": "1"},
             {"action": "redrive_version", "session_id": s.id, "recording_id": "R1",
              "version": "1"}]
    for form in forms:
        for client in (other, thief):
            resp = client.post(f"/ops/orgs/{ORG}/repair",
                               data=dict(form, csrf_token=token, reason="mine now"))
            assert resp.status_code == 403, form
    # And their own org's console cannot reach the first org's rows
    for form in forms[:2]:
        resp = other.post(f"/ops/orgs/{OTHER}/repair",
                          data=dict(form, csrf_token=token, reason="mine now"))
        assert resp.status_code == 404, form
    assert other.get(f"/ops/orgs/{OTHER}/sessions/{s.id}").status_code == 404
    assert other.get(f"/ops/orgs/{OTHER}/write?key={key}").status_code == 404
    assert console.engine.ledger.get(ORG, key).status == WriteStatus.FAILED
    assert not audited(console, ORG, "write.") or all(
        e.actor != "user:ops.other" for e in audited(console, ORG, ""))


def test_oidc_sign_in_needs_a_role_naming_the_org(console, monkeypatch):
    from chartbridge.review import oidc
    provider = oidc.Provider(ORG, "https://idp.example", "cb", None, "role")
    monkeypatch.setattr(oidc, "provider_for", lambda org, config=None: provider)
    monkeypatch.setattr(oidc, "start", lambda engine, p, redirect_uri: (
        "https://idp.example/authorize?state=s1", {"state": "s1", "verifier": "v",
                                                   "nonce": "n", "started": 0}))
    role = {"value": "operator:demo-ops-other"}
    monkeypatch.setattr(oidc, "finish", lambda engine, p, pending, args, redirect_uri: {
        "id": "jane", "name": "Jane", "role": role["value"], "issuer": p.issuer})
    client = console.app.test_client()
    resp = client.get(f"/ops/orgs/{ORG}/login")
    assert resp.status_code == 302 and resp.headers["Location"].startswith("https://idp.example")
    # A role naming another org: refused, audited
    resp = client.get(f"/ops/orgs/{ORG}/oidc/callback?state=s1&code=c")
    assert resp.status_code == 403 and "operator:demo-ops" in resp.text
    assert audited(console, ORG, "ops.sign_in_refused")
    assert client.get(f"/ops/orgs/{ORG}/sessions").status_code == 303
    # A role naming this org: signed in
    role["value"] = "operator:demo-ops"
    client.get(f"/ops/orgs/{ORG}/login")
    resp = client.get(f"/ops/orgs/{ORG}/oidc/callback?state=s1&code=c")
    assert resp.status_code == 303
    assert client.get(f"/ops/orgs/{ORG}/sessions").status_code == 200


def test_the_last_org_check_is_kept_and_shown_and_a_missing_database_is_left_alone(
        console, monkeypatch, tmp_path):
    from chartbridge.onboarding.checks import Check
    from chartbridge.ops.health import record_org_check
    # Given no engine database where `org check` runs: nothing is created
    missing = tmp_path / "nowhere" / "engine.db"
    monkeypatch.setenv("CHARTBRIDGE_DATABASE_URL", f"sqlite:///{missing}")
    record_org_check(ORG, None, True, [])
    assert not missing.exists()
    # When `org check` runs against the engine's database, with one failure
    monkeypatch.setenv("CHARTBRIDGE_DATABASE_URL", console.database_url)
    record_org_check(ORG, "prod", False, [
        Check("fhir_docref", "token granted", True, "ok"),
        Check("fhir_docref", "SMART discovery", False, "HTTP 404", fix="check the base URL")])
    # Then the health page shows it, naming the failed check (no detail text: it may be long)
    client = sign_in(console.app, ORG)
    page = client.get(f"/ops/orgs/{ORG}/health").text
    assert "failed</span>" in page and "1 passed, 1 failed" in page
    assert "fhir_docref: SMART discovery" in page and "HTTP 404" not in page
    assert "Never run" not in page
