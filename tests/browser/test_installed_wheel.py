"""The distribution as a container image gets it: the wheel built from this checkout,
installed non-editable into a fresh virtual environment with the tested constraints, run
from a folder that is not the repository. `chartbridge demo` must find everything it needs
inside the wheel (templates, mapping tables, example orgs, the demo visit's audio), write
every target, and serve pages a browser renders."""
from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from .conftest import PHONE, shot, wait_until

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.wheel]
REPO = Path(__file__).resolve().parents[2]
MUST_SHIP = [
    "chartbridge/review/templates/review/draft.html",
    "chartbridge/review/templates/review/login.html",
    "chartbridge/adapters/epic_haiku/templates/epic_haiku/page.html",
    "chartbridge/recorder/templates/recorder/page.html",
    "chartbridge/recorder/static/recorder.js",
    "chartbridge/recorder/static/recorder.css",
    "chartbridge/mappings/sections.yaml",
    "chartbridge/mappings/note_types.yaml",
    "chartbridge/mappings/templates/default.j2",
    "chartbridge/mappings/prompts/note_sections.j2",
    "chartbridge/mappings/vocabulary/clinical.txt",
    "chartbridge/config/orgs/demo-epic.yaml",
    "chartbridge/config/orgs/demo-multi.yaml",
    "chartbridge/demo_audio/encounter-1.wav",
    "chartbridge/ledger/migrations/script.py.mako",
]


def _clean_env() -> dict:
    return {k: v for k, v in os.environ.items()
            if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME", "CHARTBRIDGE_DEV_LOGIN")
            and not k.startswith("CHARTBRIDGE_")}


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    work = tmp_path_factory.mktemp("wheel")
    dist, src = work / "dist", work / "src"
    # built from a copy: setuptools' in-tree build/ folder would otherwise keep stale files
    shutil.copytree(REPO, src, ignore=shutil.ignore_patterns(
        ".git", ".venv", "build", "dist", "var", "test-artifacts", "*.egg-info", "__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", str(src),
                    "-w", str(dist)], check=True, timeout=300, cwd=work)
    (wheel,) = dist.glob("chartbridge-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    missing = [n for n in MUST_SHIP if n not in names]
    assert not missing, f"the wheel lacks {missing}"
    venv = work / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    subprocess.run([str(venv / "bin/python"), "-m", "pip", "install", "--quiet", "--no-input",
                    "-c", str(REPO / "constraints.txt"), str(wheel)],
                   check=True, timeout=900, env=_clean_env())
    run = work / "run"
    run.mkdir()
    where = subprocess.run([str(venv / "bin/python"), "-c", "import chartbridge; print(chartbridge.__file__)"],
                           capture_output=True, text=True, check=True, cwd=run).stdout.strip()
    assert where.startswith(str(venv)), f"chartbridge imported from {where}, not the wheel"
    return venv, run


def test_wheel_runs_the_demo_and_serves_its_pages(installed, new_page):
    venv, run = installed
    out, err = open(run / "stdout.txt", "w+"), open(run / "stderr.txt", "w+")
    # from a folder with no config/ and no tests/: the demo uses only what the wheel ships
    proc = subprocess.Popen([str(venv / "bin/chartbridge"), "demo", "--hold", "--auto-approve"],
                            cwd=run, stdout=out, stderr=err, stdin=subprocess.DEVNULL,
                            env=_clean_env())
    try:
        printed = (run / "stderr.txt").read_text
        wait_until(lambda: "the review page:" in printed() or proc.poll() is not None,
                   timeout=300, what="the installed demo to print its pages")
        assert proc.poll() is None, printed()[-3000:]
        haiku = re.search(r"the embedded Haiku page: (\S+)$", printed(), re.M).group(1)
        review = re.search(r"the review page: +(\S+)$", printed(), re.M).group(1)
        page = new_page(PHONE)
        page.goto(haiku)                        # the Epic launch, then the engine's template
        page.wait_for_url(re.compile(r"/orgs/demo-epic/epic/haiku/sessions/[0-9a-f]+$"))
        assert "sent to Epic" in page.locator("#sections").inner_text()
        shot(page, "wheel-haiku-page")
        page.goto(review)
        # signed in through the demo's own identity provider, onto the wheel's review list
        page.wait_for_url("**/orgs/demo-multi/review/")
        assert page.get_by_role("heading", name="Drafts awaiting review").count() == 1
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0, printed()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
        out.close()
        err.close()
    summary = (run / "stdout.txt").read_text()
    assert re.search(r"^  epic_haiku\s+accepted\s+\S+$", summary, re.M), summary[-2000:]
    for target in ("athenaone", "fhir_docref", "hl7_mdm"):
        assert re.search(rf"^  {target}\s+written\s+\S+$", summary, re.M), summary[-2000:]
    assert (run / "var" / "demo" / "chartbridge.db").is_file()
