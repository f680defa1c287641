"""Browser fixtures: Debian's Chromium driven by Playwright (never `playwright install`).

Browser tests SKIP, with the reason printed, only when Chromium or Playwright is missing
and CI is not true; in CI a missing browser is a failure."""
from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
AXE = Path(__file__).resolve().parent / "vendor" / "axe-core" / "axe.min.js"
PHONE = {"width": 390, "height": 844}
DESKTOP = {"width": 1280, "height": 900}


def _missing() -> str | None:
    if not (os.path.exists(CHROMIUM) or shutil.which("chromium")):
        return f"Chromium not found at {CHROMIUM} (apt-get install -y chromium)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "Playwright is not installed (.venv/bin/pip install playwright)"
    return None


@pytest.fixture(scope="session")
def browser():
    reason = _missing()
    if reason:
        if CI:
            raise RuntimeError(f"browser tests must run in CI: {reason}")
        print(f"\nSKIP browser tests: {reason}")
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        yield b
        b.close()


@pytest.fixture(params=[pytest.param(PHONE, id="phone"), pytest.param(DESKTOP, id="desktop")])
def viewport(request):
    return request.param


@pytest.fixture
def new_page(browser):
    contexts = []

    def make(viewport=PHONE):
        ctx = browser.new_context(viewport=viewport)
        ctx.set_default_timeout(15_000)
        ctx.add_init_script(path=str(AXE))        # init scripts are not subject to the CSP
        contexts.append(ctx)
        return ctx.new_page()
    yield make
    for ctx in contexts:
        ctx.close()


def shot(page, name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def wait_until(predicate, timeout=30.0, what="condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, f"{what} not met before the deadline"
        time.sleep(0.05)

REPO_CONFIG = Path(__file__).resolve().parents[2] / "config" / "orgs"
