"""A vendor plugin installed beside the engine registers itself through the
`chartbridge.adapters` entry-point group: a throwaway package (its SPEC, a dist-info with
entry_points.txt) on PYTHONPATH shows in the real CLI's help, `org init` writes its block,
`org validate` accepts it, `org check` runs its check and `contract-test` finds its suite
and passes it the suite environment its plugin maps — with no engine change."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

PLUGIN = "cbtest_ehr"          # the target name the plugin registers

SPEC_MODULE = '''
from chartbridge.adapters.registry import AdapterSpec, Capabilities, Simulator
from chartbridge.config.types import Settings


class CbTestConfig(Settings):
    base_url: str
    site_code: str


def _build(org_config, target_config, services):
    raise NotImplementedError("a throwaway plugin writes nothing")


def _template(org, prefix):
    return (f"  cbtest_ehr:\\n"
            f"    base_url: https://ehr.{org}.invalid/api   # CHANGE ME: the site's API\\n"
            f"    site_code: {prefix}-SITE\\n")


def _suite_env(cfg):
    return {"CBTEST_BASE_URL": cfg.base_url}, "cbtest suite against the configured site"


SPEC = AdapterSpec(
    name="cbtest_ehr",
    config_model=CbTestConfig,
    factory=_build,
    description="throwaway test EHR",
    checks="cbtest_plugin.checks:check",
    template=_template,
    mapping_note="no code-table fields (throwaway plugin)",
    simulator=Simulator(module="cbtest_plugin.sim", default_port=9099, cli_name="cbtest-sim",
                        summary="throwaway test EHR"),
    suite="cbtest_plugin.suite",
    suite_env=_suite_env,
)
'''

CHECKS_MODULE = '''
from chartbridge.onboarding.checks import Check


def check(org, cfg, http, clock):
    yield Check("cbtest_ehr", "site code", cfg.site_code.endswith("-SITE"),
                f"cbtest plugin check ran for {org.org} (site {cfg.site_code})")
'''

SUITE_TEST = '''
import os


def test_the_suite_sees_its_environment():
    # with --org the plugin's suite_env is set; with --vendor alone it is not
    assert os.environ.get("CBTEST_BASE_URL") in (None, "https://ehr.x-clinic.invalid/api")
    print("CBTEST SUITE RAN", os.environ.get("CBTEST_BASE_URL"))
'''


@pytest.fixture(scope="module")
def plugin_path(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("plugin")
    pkg = root / "cbtest_plugin"
    (pkg / "suite").mkdir(parents=True)
    (pkg / "__init__.py").write_text(textwrap.dedent(SPEC_MODULE))
    (pkg / "checks.py").write_text(textwrap.dedent(CHECKS_MODULE))
    (pkg / "sim.py").write_text("def serve(host, port):\n    raise SystemExit(0)\n")
    (pkg / "suite" / "__init__.py").write_text("")
    (pkg / "suite" / "test_cbtest_contract.py").write_text(textwrap.dedent(SUITE_TEST))
    dist = root / "cbtest_plugin-0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: cbtest-plugin\nVersion: 0\n")
    (dist / "entry_points.txt").write_text(f"[chartbridge.adapters]\n{PLUGIN} = cbtest_plugin:SPEC\n")
    return root


def cli(plugin_path: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items()
           if k not in ("CHARTBRIDGE_ENV", "CHARTBRIDGE_CONFIG_DIR", "PYTEST_ADDOPTS")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(plugin_path), env.get("PYTHONPATH")]))
    return subprocess.run([sys.executable, "-m", "chartbridge.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


def test_an_installed_plugin_is_found_everywhere_without_engine_change(plugin_path, tmp_path):
    orgs = tmp_path / "orgs"
    # The plugin's simulator is a `simulate` subcommand, its name a contract-test vendor
    # and an org init target
    sim = cli(plugin_path, "simulate", "--help", cwd=tmp_path)
    assert sim.returncode == 0, sim.stderr
    assert "cbtest-sim" in sim.stdout and "throwaway test EHR" in sim.stdout
    assert f"{PLUGIN}" in cli(plugin_path, "contract-test", "--help", cwd=tmp_path).stdout
    assert f"{PLUGIN}" in cli(plugin_path, "org", "init", "--help", cwd=tmp_path).stdout

    # org init writes the plugin's block (after a built-in one, in registry order)
    init = cli(plugin_path, "org", "init", "x-clinic", "--targets", f"{PLUGIN},hl7_mdm",
               "--config-dir", str(orgs), cwd=tmp_path)
    assert init.returncode == 0, init.stderr
    text = (orgs / "x-clinic.yaml").read_text()
    assert "  cbtest_ehr:\n    base_url: https://ehr.x-clinic.invalid/api" in text
    assert text.index("  hl7_mdm:") < text.index("  cbtest_ehr:")
    assert "#   cbtest_ehr: no code-table fields (throwaway plugin)" in text

    # ... that validates against the plugin's config model
    val = cli(plugin_path, "org", "validate", "--config-dir", str(orgs), cwd=tmp_path)
    assert val.returncode == 0, val.stdout + val.stderr
    assert "ok x-clinic" in val.stdout and "cbtest_ehr" in val.stdout

    # org check runs the plugin's own check (the hl7 target fails: its host is .invalid)
    chk = cli(plugin_path, "org", "check", "x-clinic", "--config-dir", str(orgs), cwd=tmp_path)
    assert "[PASS] cbtest_ehr" in chk.stdout, chk.stdout + chk.stderr
    assert "cbtest plugin check ran for x-clinic (site X_CLINIC-SITE)" in chk.stdout
    assert "[FAIL] hl7_mdm" in chk.stdout and chk.returncode == 1

    # contract-test finds the plugin's suite: on its own, and for the org with its env
    alone = cli(plugin_path, "contract-test", "--vendor", PLUGIN, "--", "-s", cwd=tmp_path)
    assert alone.returncode == 0, alone.stdout + alone.stderr
    assert "CBTEST SUITE RAN None" in alone.stdout and "1 passed" in alone.stdout
    org_run = cli(plugin_path, "contract-test", "--org", "x-clinic", "--vendor", PLUGIN,
                  "--config-dir", str(orgs), "--", "-s", cwd=tmp_path)
    assert org_run.returncode == 0, org_run.stdout + org_run.stderr
    assert "CBTEST SUITE RAN https://ehr.x-clinic.invalid/api" in org_run.stdout
    assert "cbtest suite against the configured site" in org_run.stderr


def test_an_unknown_vendor_is_still_refused(plugin_path, tmp_path):
    bad = cli(plugin_path, "contract-test", "--vendor", "no_such_ehr", cwd=tmp_path)
    assert bad.returncode != 0 and "no_such_ehr" in bad.stderr
