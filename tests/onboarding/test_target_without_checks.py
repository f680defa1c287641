"""A configured target whose plugin declares no go-live checks fails `org check` with that
reason: a go-live is never waved through unchecked."""
from __future__ import annotations

import dataclasses
import json

from click.testing import CliRunner

from chartbridge.adapters.registry import registry
from chartbridge.cli.org import org as org_cli
from chartbridge.onboarding.checks import run_checks
from chartbridge.onboarding.effective import load_effective


def test_a_target_whose_plugin_has_no_checks_fails_org_check(tmp_path, monkeypatch):
    # Given an org with one MLLP target, written by org init (valid as written)
    r = CliRunner().invoke(org_cli, ["init", "plain-clinic", "--targets", "hl7_mdm",
                                     "--config-dir", str(tmp_path)], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    # And that target's plugin declaring no go-live checks
    spec = registry.get("hl7_mdm")
    assert spec.checks is not None
    monkeypatch.setitem(registry._specs, "hl7_mdm", dataclasses.replace(spec, checks=None))
    eff, errors = load_effective(tmp_path, "plain-clinic", None, check_mappings=False)
    assert eff is not None, errors

    # When the checks run
    results = run_checks(eff.org)

    # Then the target fails, with the reason and what to do, and nothing of it passes
    mine = [c for c in results if c.target == "hl7_mdm"]
    assert [(c.name, c.ok, c.skipped) for c in mine] == [("checks", False, False)]
    assert mine[0].detail == "no go-live checks for target hl7_mdm"
    assert "declares no checks" in mine[0].fix
    # And `org check` exits 1 with that line
    out = CliRunner().invoke(org_cli, ["check", "plain-clinic", "--config-dir", str(tmp_path),
                                       "--json"], catch_exceptions=False)
    assert out.exit_code == 1, out.output
    doc = json.loads(out.output)
    assert doc["ok"] is False
    assert {"target": "hl7_mdm", "name": "checks", "ok": False,
            "detail": "no go-live checks for target hl7_mdm"}.items() <= \
        next(c for c in doc["checks"] if c["target"] == "hl7_mdm").items()


def test_the_same_target_with_its_checks_runs_them(tmp_path):
    # Given the same org with the real plugin: its own MLLP connect check runs (and fails:
    # the skeleton's host is under .invalid), so the failure above was the missing checks
    CliRunner().invoke(org_cli, ["init", "plain-clinic", "--targets", "hl7_mdm",
                                 "--config-dir", str(tmp_path)], catch_exceptions=False)
    eff, _ = load_effective(tmp_path, "plain-clinic", None, check_mappings=False)
    names = [c.name for c in run_checks(eff.org) if c.target == "hl7_mdm"]
    assert names == ["MLLP connect"]
