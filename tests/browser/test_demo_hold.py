"""`chartbridge demo --hold` as a new user meets it: the command is started as its own
process, and the two links it prints are opened in real Chromium on a phone-sized screen.

The embedded Haiku link goes through the Epic simulator's EHR launch (a fresh `launch`
handle, then the engine's SMART authorization round trip) to the session's page; the review
link leads through the second site's sign-in (the demo's own OIDC provider) to its staged draft, which
is edited and approved there, and the writes to FHIR, athenaOne and HL7 MDM are then shown
written, on the page and in the demo's own output."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys

import pytest

from .a11y import check_accessibility
from .conftest import PHONE, shot, wait_until

pytestmark = [pytest.mark.browser, pytest.mark.slow]
TARGETS = ("fhir_docref", "athenaone", "hl7_mdm")


def fits(page, width: int = PHONE["width"]) -> None:
    """Nothing scrolls sideways: the page is no wider than the screen."""
    wide = page.evaluate("document.documentElement.scrollWidth")
    assert wide <= width, f"page is {wide} px wide on a {width} px screen"


@pytest.fixture(scope="module")
def held(tmp_path_factory):
    work = tmp_path_factory.mktemp("held-demo")
    out, err = open(work / "stdout.txt", "w+"), open(work / "stderr.txt", "w+")
    # a user's shell: the demo itself turns on the development login for its orgs
    env = {k: v for k, v in os.environ.items() if k != "CHARTBRIDGE_DEV_LOGIN"}
    proc = subprocess.Popen([sys.executable, "-m", "chartbridge.cli", "demo", "--hold",
                             "--workdir", str(work / "demo")],
                            stdout=out, stderr=err, stdin=subprocess.DEVNULL, env=env)

    def printed() -> str:
        return (work / "stderr.txt").read_text()
    try:
        wait_until(lambda: "the review page:" in printed() or proc.poll() is not None,
                   timeout=240, what="the demo to print its pages")
        text = printed()
        assert proc.poll() is None, text[-3000:]
        haiku = re.search(r"the embedded Haiku page: (\S+)$", text, re.M).group(1)
        review = re.search(r"the review page: +(\S+)$", text, re.M).group(1)
        user = re.search(r"through the demo's identity provider \(it signs you in as (\S+),",
                         text).group(1)
        yield type("Held", (), {"proc": proc, "haiku": haiku, "review": review, "user": user,
                                "stderr": printed, "stdout": lambda: (work / "stdout.txt").read_text()})
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
        out.close()
        err.close()


def test_printed_haiku_link_opens_through_a_smart_ehr_launch(held, new_page):
    assert "<" not in held.haiku and "launch=" not in held.haiku    # no placeholder to fill in
    page = new_page(PHONE)
    page.goto(held.haiku)
    page.wait_for_url(re.compile(r"/orgs/demo-epic/epic/haiku/sessions/[0-9a-f]+$"))
    page.wait_for_selector("#sections li[data-section='10164-2']")
    assert "sent to Epic" in page.locator("#sections li[data-section='10164-2']").inner_text()
    assert page.locator("#versions li[data-version='2']").count() == 1
    fits(page)
    check_accessibility(page)
    shot(page, "demo-hold-haiku-phone")


def test_printed_review_link_edits_and_approves_the_waiting_draft(held, new_page):
    page = new_page(PHONE)
    # the second site signs its clinicians in through its identity provider (OIDC): the
    # demo's own provider answers at once, as the person the demo printed
    page.goto(held.review)
    page.wait_for_url("**/orgs/demo-multi/review/")
    assert held.user == "DEMO-DR-2"
    items = page.locator("#drafts li")
    assert items.count() == 1, "the demo's draft is not waiting for review"
    fits(page)
    items.first.locator("a").click()
    section = page.locator("section[data-section='10164-2']")
    section.locator("summary").click()
    section.locator("textarea").fill("Cough with yellow sputum for four days; short of breath on stairs.")
    section.get_by_role("button", name="Save edit").click()
    page.wait_for_url("**notice=edited**")
    assert "yellow sputum for four days" in page.locator("section[data-section='10164-2']").inner_text()
    page.get_by_role("button", name="Approve and write").click()
    page.wait_for_url("**notice=approved**")
    for target in TARGETS:
        row = page.wait_for_selector(f"tr[data-target='{target}'][data-status='succeeded']",
                                     timeout=60_000)
        assert "EHR id" in row.inner_text()
    fits(page)                                       # with the real-length EHR ids shown
    check_accessibility(page)
    shot(page, "demo-hold-review-written-phone")
    # the demo's own output names each write as it happens
    for target in TARGETS:
        wait_until(lambda: re.search(rf"^• write {target} create: succeeded", held.stderr(), re.M),
                   timeout=30, what=f"the demo to print the {target} write")
    # and on SIGTERM it ends cleanly with every target written in its summary
    held.proc.send_signal(signal.SIGTERM)
    assert held.proc.wait(timeout=60) == 0, held.stderr()[-2000:]
    summary = held.stdout()
    for target in TARGETS:
        assert re.search(rf"^  {target}\s+written\s+\S+$", summary, re.M), summary[-1500:]
    assert summary.rstrip().endswith("OK: every write reached its final state")
