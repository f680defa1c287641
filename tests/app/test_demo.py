"""`chartbridge demo --json` is the README's "run it" command: a whole Haiku visit with the
real transcriber, over HTTP against the Epic simulator."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest


@pytest.mark.slow
def test_demo_json_reports_sections_drafted_from_the_visit(tmp_path):
    out = subprocess.run([sys.executable, "-m", "chartbridge.cli", "demo", "--json",
                          "--workdir", str(tmp_path / "demo")],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "Traceback" not in out.stderr
    result = json.loads(out.stdout)
    assert result["session_id"] == "AMB-DEMO-0001" and result["recording_version"] == 2
    # sections drafted from the fixture's speech (encounter-1: pneumonia, amoxicillin)
    assert "pneumonia" in result["sections"]["51847-2"].lower()
    assert "short of breath" in result["sections"]["10164-2"].lower()
    # the clinician's edit survived the second recording
    assert result["edit_survived"] is True and "51847-2" not in result["second_sections"]
    assert [r["status"] for r in result["ledger"]] == ["succeeded"] * 5
    assert result["targets"]["epic_haiku"]["status"] == "accepted"
    # the second site wrote the approved note to every target it has configured
    for target in ("fhir_docref", "athenaone", "hl7_mdm"):
        assert result["targets"][target]["status"] == "written", result["targets"][target]
        assert result["targets"][target]["external_id"]
    assert result["targets"]["hl7_mdm"]["ack"] == "AA"
    # that site drafts the split assessment (51848-0) and plan (18776-5) sections
    assert "pneumonia" in result["second_site"]["sections"]["51848-0"].lower()
    assert "x-ray" in result["second_site"]["sections"]["18776-5"].lower()
    assert result["timings_ms"]["stop_to_documentation_ready"] > 0
    # the embedded page and the review page, printed while it runs
    # (the Haiku link plays Haiku opening the web view: a fresh SMART EHR launch each time)
    assert result["pages"]["epic_haiku_launch"].endswith("/_sim/sessions/AMB-DEMO-0001/haiku")
    assert result["pages"]["review"].endswith("/orgs/demo-multi/review/")
    assert result["pages"]["review"] in out.stderr.replace("\n", "")


def test_demo_refuses_a_missing_audio_file_in_one_line(tmp_path):
    out = subprocess.run([sys.executable, "-m", "chartbridge.cli", "demo", "--audio",
                          str(tmp_path / "nope.wav"), "--workdir", str(tmp_path / "d")],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode != 0 and "Traceback" not in out.stderr
    assert "nope.wav" in out.stderr
