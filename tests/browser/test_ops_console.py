"""The operator console in real Chromium (Debian's, through Playwright): each page at a
desktop size and at 390×844, axe clean, each repair made from its form, and a second org's
operator refused. The engine runs for real against the FHIR simulator (tests/ops/site.py);
the stuck and failed states are made for real (a refused transaction, a lost answer, a
worker SIGKILLed mid-chunk); the queue is drained by the test after each repair. The
HTTP-level refusals of every page and action are in tests/ops/test_console.py."""
from __future__ import annotations

import threading

import pytest

from chartbridge.core.models import ChunkState, VersionState, WriteStatus
from chartbridge.web import create_app
from tests.ops.site import Site

from .a11y import check_accessibility
from .conftest import DESKTOP, PHONE, shot

pytestmark = pytest.mark.browser
ORG, OTHER = "demo-ops", "demo-ops-other"
VIEWPORTS = (("phone", PHONE), ("desktop", DESKTOP))


@pytest.fixture
def ops(tmp_path, monkeypatch):
    monkeypatch.setenv("CHARTBRIDGE_DEV_LOGIN", "1")
    site = Site(tmp_path, f"sqlite:///{tmp_path / 'engine.db'}", orgs=(ORG, OTHER))
    from waitress.server import create_server
    app = create_app(site.engine, jobs=site.jobs)
    server = create_server(app, host="127.0.0.1", port=0, threads=4)
    threading.Thread(target=server.run, daemon=True).start()
    site.base = f"http://127.0.0.1:{server.effective_port}"
    app.config["CHARTBRIDGE_PUBLIC_URL"] = site.base
    try:
        yield site
    finally:
        server.close()
        site.close()


def sign_in(page, base, org=ORG, role="operator", user="ops.jane"):
    page.goto(f"{base}/ops/orgs/{org}/sessions")
    page.wait_for_url(f"**/ops/orgs/{org}/login")
    page.get_by_label("User id").fill(user)
    page.get_by_label("Role").select_option(role)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(f"**/ops/orgs/{org}/sessions")


def failed_write(site):
    return site.write_with_fault(ORG, 422)


def repair(page, action: str, reason: str, row=None, **choices):
    scope = row if row is not None else page
    form = scope.locator(f"form[data-action='{action}']").first
    form.locator("xpath=ancestor::details[1]/summary").click()
    for label, value in choices.items():
        field = form.get_by_label(label)
        if field.evaluate("e => e.tagName") == "SELECT":
            field.select_option(value)
        else:
            field.fill(value)
    form.get_by_label("Reason (kept in the audit trail)").fill(reason)
    form.get_by_role("button").click()
    page.wait_for_url("**notice=**")


def test_sign_in_and_sessions_page(ops, new_page):
    stuck = ops.open_session(ORG)                           # announced, never transcribed
    done, _ = ops.drafted(ORG)
    for name, viewport in VIEWPORTS:
        page = new_page(viewport)
        page.goto(f"{ops.base}/ops/")
        check_accessibility(page)
        page.get_by_label("Organization id").fill(ORG)
        page.get_by_role("button", name="Open").click()
        page.wait_for_url(f"**/ops/orgs/{ORG}/login")
        check_accessibility(page)
        sign_in(page, ops.base)
        # Given the default threshold, nothing is old enough to be stuck
        assert page.locator(f"tr[data-session='{stuck.id}']").get_attribute("data-stuck") == "no"
        # When the operator lowers the threshold and filters to stuck sessions
        page.get_by_label("State").select_option("stuck")
        page.get_by_label("Stuck after (seconds)").fill("0")
        page.get_by_role("button", name="Filter").click()
        page.wait_for_url("**state=stuck**")
        # Then only the stuck session is listed, with the reason the engine knows
        rows = page.locator("#sessions tbody tr")
        assert rows.count() == 1 and rows.first.get_attribute("data-session") == stuck.id
        assert "chunk R1#1 announced, not transcribed" in rows.first.inner_text()
        assert page.locator(f"tr[data-session='{done.id}']").count() == 0
        check_accessibility(page)
        shot(page, f"ops-sessions-{name}")


def test_session_page_redrives_a_killed_workers_chunk_and_version(ops, new_page, tmp_path):
    # Given a worker killed while transcribing a chunk
    s = ops.open_session(ORG)
    ops.kill_worker_during(tmp_path, "process_chunk", ORG, s.id, "R1", 1)
    url = f"{ops.base}/ops/orgs/{ORG}/sessions/{s.id}?stuck_after_s=0"
    for name, viewport in VIEWPORTS:
        page = new_page(viewport)
        sign_in(page, ops.base)
        page.goto(url)
        assert "Stuck" in page.locator("#stuck").inner_text()
        assert page.locator("#correlation-id").inner_text() == s.correlation_id
        check_accessibility(page)
        shot(page, f"ops-session-{name}")
    # When the operator re-drives the chunk from its row
    repair(page, "redrive_chunk", "worker was killed", row=page.locator("tr[data-chunk='R1#1']"))
    assert page.locator("#notice").is_visible()
    ops.drain()
    assert ops.engine.store.get_chunk(ORG, s.id, "R1", 1).state == ChunkState.TRANSCRIBED
    # And, once the version is announced and claimed but its worker killed while drafting,
    # re-drives the version
    ready = ops.stop_recording(ORG, s)
    ops.kill_worker_during(tmp_path, "finish_version", ORG, s.id, "R1", ready.version)
    page.goto(url)
    repair(page, "redrive_version", "drafting worker died",
           row=page.locator("tr[data-version='R1/1']"))
    ops.drain()
    # Then the version is done and drafted, and the page shows it
    (rec,) = ops.engine.store.recordings(ORG, s.id)
    assert rec.state == VersionState.DONE
    page.goto(url)
    assert page.locator("tr[data-version='R1/1']").get_attribute("data-state") == "done"
    assert page.locator("#drafts tbody tr").count() == 1
    check_accessibility(page)


def test_writes_and_write_pages_requeue_resolve_cancel_and_show_the_payload(ops, new_page):
    requeued, cancelled = failed_write(ops), failed_write(ops)
    lost = ops.write_with_fault(ORG, kind="lose_response", max_attempts=1)
    assert ops.engine.ledger.get(ORG, lost).status == WriteStatus.NEEDS_RECONCILIATION
    for name, viewport in VIEWPORTS:
        page = new_page(viewport)
        sign_in(page, ops.base, role="operator-phi", user=f"ops.{name}")
        page.goto(f"{ops.base}/ops/orgs/{ORG}/writes")
        assert page.locator("#writes tbody tr").count() == 3
        check_accessibility(page)
        shot(page, f"ops-writes-{name}")
        page.goto(f"{ops.base}/ops/orgs/{ORG}/write?key={requeued}")
        check_accessibility(page)
        # The payload is behind a link, and its view is audited
        page.locator("#show-payload").click()
        page.wait_for_url("**show=payload**")
        assert "DocumentReference" in page.locator("#payload-rendered").inner_text()
        check_accessibility(page)
        shot(page, f"ops-write-{name}")
    # When the failed write is requeued from its page
    page.goto(f"{ops.base}/ops/orgs/{ORG}/write?key={requeued}")
    repair(page, "requeue", "validator fixed")
    ops.drain()
    # When the lost answer is resolved by asking the EHR (it has it: nothing resent)
    page.goto(f"{ops.base}/ops/orgs/{ORG}/write?key={lost}")
    repair(page, "resolve", "checked the chart", **{"What you found": "resend"})
    # When the other failed write is cancelled
    page.goto(f"{ops.base}/ops/orgs/{ORG}/write?key={cancelled}")
    repair(page, "cancel", "duplicate visit")
    # Then the ledger and the EHR agree: two documents, one per delivered write
    statuses = {k: ops.engine.ledger.get(ORG, k).status for k in (requeued, lost, cancelled)}
    assert statuses == {requeued: WriteStatus.SUCCEEDED, lost: WriteStatus.SUCCEEDED,
                        cancelled: WriteStatus.CANCELLED}
    docs = sorted(f"DocumentReference/{d['id']}" for d in ops.documents())
    assert docs == sorted(ops.engine.ledger.get(ORG, k).external_id for k in (requeued, lost))
    page.goto(f"{ops.base}/ops/orgs/{ORG}/writes?status=cancelled")
    assert page.locator("#writes tbody tr").get_attribute("data-key") == cancelled
    check_accessibility(page)


def test_health_page(ops, new_page):
    failed_write(ops)
    _, draft = ops.drafted(ORG)
    for key in ops.approve(ORG, draft):
        ops.jobs.execute_write.fn(ORG, key)
    for name, viewport in VIEWPORTS:
        page = new_page(viewport)
        sign_in(page, ops.base)
        page.goto(f"{ops.base}/ops/orgs/{ORG}/health")
        target = page.locator("section[data-target='fhir_docref']")
        assert target.locator(".last-success").inner_text() != "never"
        assert "PermanentError" in target.locator(".errors").inner_text() or \
            target.locator(".errors li").count() >= 1
        assert page.locator("#check-never").is_visible()
        check_accessibility(page)
        shot(page, f"ops-health-{name}")


def test_audit_page_searches_and_exports(ops, new_page):
    failed_write(ops)
    for name, viewport in VIEWPORTS:
        page = new_page(viewport)
        sign_in(page, ops.base)
        page.goto(f"{ops.base}/ops/orgs/{ORG}/audit")
        page.get_by_label("Action (prefix, e.g. write.)").fill("write.failed")
        page.get_by_role("button", name="Search").click()
        page.wait_for_url("**action=write.failed**")
        assert {r.get_attribute("data-action")
                for r in page.locator("#audit tbody tr").all()} == {"write.failed"}
        check_accessibility(page)
        shot(page, f"ops-audit-{name}")
        with page.expect_download() as got:
            page.locator("#export").click()
        bundle = __import__("json").loads(open(got.value.path()).read())
        assert [e["resource"]["subtype"][0]["code"] for e in bundle["entry"]] == ["write.failed"]


def test_a_second_orgs_operator_is_refused_in_the_browser(ops, new_page):
    key = failed_write(ops)
    page = new_page(PHONE)
    sign_in(page, ops.base, org=OTHER, role="operator-phi", user="ops.other")
    # Their session does not open the first org's pages: each asks to sign in there
    for path in ("sessions", "writes", f"write?key={key}", "health", "audit"):
        page.goto(f"{ops.base}/ops/orgs/{ORG}/{path}")
        page.wait_for_url(f"**/ops/orgs/{ORG}/login")
    # And their own org's console does not find the first org's write
    page.goto(f"{ops.base}/ops/orgs/{OTHER}/write?key={key}")
    assert "no such write" in page.locator("#error-message").inner_text()
    check_accessibility(page)
    # A repair form of the first org, posted with their session, is refused
    page.goto(f"{ops.base}/ops/orgs/{OTHER}/writes")
    token = page.locator("input[name=csrf_token]").first.get_attribute("value")
    resp = page.request.post(f"{ops.base}/ops/orgs/{ORG}/repair", form={
        "csrf_token": token, "action": "requeue", "key": key, "reason": "mine"})
    assert resp.status == 403
    assert ops.engine.ledger.get(ORG, key).status == WriteStatus.FAILED
