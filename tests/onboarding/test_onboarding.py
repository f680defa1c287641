"""Site onboarding: org init -> validate -> fill -> green org check against the simulators,
layered config (overlays) with provenance, each broken piece failing with its reason."""
from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from chartbridge.cli.contract_test import _junit_for, suite_env
from chartbridge.cli.org import org as org_cli
from chartbridge.config.loader import ConfigStore, load_org_file, validate_files
from chartbridge.core.errors import NotFound
from chartbridge.onboarding.checks import run_checks
from chartbridge.onboarding.effective import load_effective
from chartbridge.onboarding.sandbox import _new_private_key, public_jwk, start_sandbox

REPO = Path(__file__).resolve().parents[2]
ALL = "epic_haiku,fhir_docref,athenaone,hl7_mdm"


def run(*args: str, env: dict | None = None):
    return CliRunner().invoke(org_cli, list(args), env=env, catch_exceptions=False)


def edit(path: Path, fn) -> None:
    """Change YAML values in place (comments are lost: fine for a test's copy)."""
    doc = yaml.safe_load(path.read_text())
    fn(doc)
    path.write_text(yaml.safe_dump(doc, sort_keys=False))


# --- init ----------------------------------------------------------------------------------


def test_init_skeleton_validates_as_written_and_never_overwrites(tmp_path):
    # Given an empty config folder
    # When a skeleton is written for all four targets
    r = run("init", "new-clinic", "--targets", ALL, "--config-dir", str(tmp_path))
    # Then it exists, names env: placeholders and validates as written
    assert r.exit_code == 0, r.output
    text = (tmp_path / "new-clinic.yaml").read_text()
    for ref in ("env:NEW_CLINIC_EPIC_PRIVATE_KEY", "env:NEW_CLINIC_FHIR_PRIVATE_KEY",
                "env:NEW_CLINIC_ATHENA_SECRET"):
        assert ref in text
    assert "CHANGE ME" in text and "txa2" in text          # the mappings it will use
    v = run("validate", "--config-dir", str(tmp_path))
    assert v.exit_code == 0, v.output
    assert "ok new-clinic" in v.output
    # And a second init refuses, with one line, and leaves the file alone
    again = run("init", "new-clinic", "--targets", "hl7_mdm", "--config-dir", str(tmp_path))
    assert again.exit_code == 1 and len(again.output.strip().splitlines()) == 1
    assert "already exists" in again.output
    assert (tmp_path / "new-clinic.yaml").read_text() == text


def test_init_respects_config_dir_env_and_refuses_unknown_target(tmp_path):
    # Given CHARTBRIDGE_CONFIG_DIR set
    r = run("init", "env-clinic", "--targets", "hl7_mdm",
            env={"CHARTBRIDGE_CONFIG_DIR": str(tmp_path)})
    # Then the file lands there
    assert r.exit_code == 0 and (tmp_path / "env-clinic.yaml").is_file()
    # When a target is unknown, nothing is written and the field is named
    bad = run("init", "x", "--targets", "epic,hl7_mdm", "--config-dir", str(tmp_path))
    assert bad.exit_code == 1 and "unknown target(s) epic" in bad.output
    assert not (tmp_path / "x.yaml").exists()


# --- overlays ------------------------------------------------------------------------------


@pytest.fixture
def layered(tmp_path):
    shutil.copy(REPO / "config/orgs/demo-multi.yaml", tmp_path / "demo-multi.yaml")
    (tmp_path / "demo-multi.sandbox.yaml").write_text(
        "name: Demo Multi (sandbox)\n"
        "targets:\n"
        "  athenaone:\n"
        "    practice_id: \"195901\"\n"
        "  hl7_mdm:\n"
        "    tls: null\n"
        "    processing_id: T\n")
    return tmp_path


def test_overlay_is_merged_for_its_env_and_is_never_an_org(layered, monkeypatch):
    # Given a base and a sandbox overlay
    # When the store reads the org without and with CHARTBRIDGE_ENV
    base = ConfigStore(layered, env=None).get("demo-multi")
    monkeypatch.setenv("CHARTBRIDGE_ENV", "sandbox")
    store = ConfigStore(layered)
    sandbox = store.get("demo-multi")
    # Then only the overlay's keys change; the rest is the base's
    assert base.targets["athenaone"].practice_id == "195900"
    assert sandbox.targets["athenaone"].practice_id == "195901"
    assert sandbox.targets["athenaone"].client_id == base.targets["athenaone"].client_id
    assert sandbox.name == "Demo Multi (sandbox)" and sandbox.targets["hl7_mdm"].processing_id == "T"
    # And the overlay file is not an org
    assert store.org_ids() == ["demo-multi"]
    with pytest.raises(NotFound):
        store.get("demo-multi.sandbox")
    # And an edit of the overlay is picked up
    over = layered / "demo-multi.sandbox.yaml"
    over.write_text(over.read_text().replace("195901", "195902"))
    assert store.get("demo-multi").targets["athenaone"].practice_id == "195902"


def test_each_org_can_select_its_own_overlay(layered, monkeypatch):
    # Given two orgs on one engine whose default overlay is production: demo-multi's file
    # selects its sandbox overlay itself, the other org names none
    shutil.copy(REPO / "config/orgs/demo-epic.yaml", layered / "demo-epic.yaml")
    (layered / "demo-epic.production.yaml").write_text("name: Demo Epic (production)\n")
    (layered / "demo-multi.production.yaml").write_text("name: Demo Multi (production)\n")
    monkeypatch.setenv("CHARTBRIDGE_ENV", "production")
    edit(layered / "demo-multi.yaml", lambda doc: doc.update(environment="sandbox"))
    store = ConfigStore(layered)
    # When the engine reads both
    # Then each gets its own overlay: the org's choice wins over the engine's default
    assert store.get("demo-multi").name == "Demo Multi (sandbox)"
    assert store.get("demo-multi").targets["athenaone"].practice_id == "195901"
    assert store.get("demo-epic").name == "Demo Epic (production)"
    # And an explicit --env wins over both
    assert ConfigStore(layered, env="production").get("demo-multi").name == "Demo Multi (production)"
    r = run("show", "demo-multi", "--config-dir", str(layered), "--json")
    assert json.loads(r.output)["env"] == "sandbox"
    # And a change of the org's choice is picked up without a restart
    edit(layered / "demo-multi.yaml", lambda doc: doc.update(environment="production"))
    assert store.get("demo-multi").name == "Demo Multi (production)"
    # And an overlay cannot choose the environment (it is chosen by the base file)
    (layered / "demo-multi.sandbox.yaml").write_text("environment: production\n")
    monkeypatch.delenv("CHARTBRIDGE_ENV")                  # validate every overlay
    r = run("validate", "--config-dir", str(layered))
    assert r.exit_code == 1 and "demo-multi.sandbox.yaml:1: environment" in r.output


def test_overlay_error_names_the_overlay_file_and_line(layered):
    # Given an overlay with a bad value on its line 4 and an unknown key on line 8
    (layered / "demo-multi.sandbox.yaml").write_text(
        "targets:\n  athenaone:\n    client_id: x\n    token_url: ftp://nope\n"
        "  hl7_mdm:\n    port: 2575\n    tls:\n      enabld: true\n")
    # When validated (directly and through the CLI)
    _, errors = validate_files([layered / "demo-multi.sandbox.yaml"])
    # Then each error names the overlay file, its line and the key
    where = sorted((Path(e.file).name, e.line, e.key) for e in errors)
    assert where == [("demo-multi.sandbox.yaml", 4, "targets.athenaone.token_url"),
                     ("demo-multi.sandbox.yaml", 8, "targets.hl7_mdm.tls.enabld")]
    r = run("validate", "--config-dir", str(layered))
    assert r.exit_code == 1
    assert "demo-multi.sandbox.yaml:4: targets.athenaone.token_url" in r.output
    assert "ok demo-multi:" in r.output                # the base alone is still fine
    r = run("validate", "--config-dir", str(layered), "--env", "sandbox")
    assert r.exit_code == 1 and "ok demo-multi" not in r.output


def test_show_origin_traces_each_value_and_masks_secrets(layered, monkeypatch):
    # Given a secret that resolves in this environment
    monkeypatch.setenv("DEMO_MULTI_ATHENA_SECRET", "s3cr3t-value-never-shown")
    # When the effective sandbox config is shown with origins
    r = run("show", "demo-multi", "--env", "sandbox", "--origin", "--config-dir", str(layered))
    assert r.exit_code == 0, r.output
    lines = {l.split(" = ")[0]: l for l in r.output.splitlines() if " = " in l}
    # Then overlay values point at the overlay's line, base values at the base's, defaults say so
    assert lines["targets.athenaone.practice_id"].endswith("demo-multi.sandbox.yaml:4")
    assert re.search(r"demo-multi\.yaml:\d+$", lines["targets.athenaone.client_id"])
    assert lines["targets.hl7_mdm.tls.enabled"].endswith("# default")      # overlay removed tls
    assert lines["targets.fhir_docref.transaction"].endswith("# default")
    # And a secret shows as its reference, never its value
    assert '"env:DEMO_MULTI_ATHENA_SECRET"' in lines["targets.athenaone.client_secret"]
    assert "s3cr3t" not in r.output
    j = json.loads(run("show", "demo-multi", "--json", "--config-dir", str(layered)).output)
    assert {"key": "targets.athenaone.practice_id", "value": "195900"}.items() <= \
        next(v for v in j["values"] if v["key"] == "targets.athenaone.practice_id").items()


# --- check: init -> green, then each broken piece -----------------------------------------


@pytest.fixture
def onboarded(tmp_path, monkeypatch):
    """A new org from `org init`, its placeholders filled against simulators started
    in-process (each registered as a site would register us)."""
    from contract_tests.athenaone.simulator import AthenaSimulator
    from contract_tests.epic_haiku.simulator import EpicSimulator
    from contract_tests.fhir_docref.simulator import FhirSimulator
    from contract_tests.hl7_mdm.simulator import HL7MDMSimulator

    assert run("init", "acme", "--targets", ALL, "--config-dir", str(tmp_path)).exit_code == 0
    epic_pem, fhir_pem = _new_private_key("RS384"), _new_private_key("RS384")
    with EpicSimulator(epic_client_id={"acme": "acme-epic-iss"}) as epic, \
            FhirSimulator("us-core") as fhir, AthenaSimulator() as athena, \
            HL7MDMSimulator() as mllp:
        epic.start()
        epic.register_client("acme-backend", {"keys": [public_jwk(epic_pem, "k1", "RS384")]})
        fhir.register_client("acme-fhir", public_jwk(fhir_pem, "f1", "RS384"),
                             scopes=["system/DocumentReference.write", "system/DocumentReference.read",
                                     "system/Provenance.write"])
        athena.add_client("acme-athena", "athena-pass", "195900")
        (tmp_path / "keys").mkdir()
        (tmp_path / "keys/fhir.pem").write_text(fhir_pem)
        monkeypatch.setenv("ACME_EPIC_PRIVATE_KEY", epic_pem)
        monkeypatch.setenv("ACME_ATHENA_SECRET", "athena-pass")

        def fill(doc):
            t = doc["targets"]
            t["epic_haiku"].update(client_id="acme-backend", token_url=epic.token_url, key_id="k1",
                                   fhir_base=f"{epic.base_url}/api/FHIR/R4")
            t["epic_haiku"]["inbound"] = {"issuer": "acme-epic-iss", "jwks_url": epic.jwks_url}
            t["fhir_docref"].update(base_url=fhir.base_url, client_id="acme-fhir", key_id="f1",
                                    private_key="file:keys/fhir.pem")
            t["athenaone"].update(base_url=athena.base_url, token_url=athena.token_url,
                                  client_id="acme-athena", practice_id="195900")
            t["hl7_mdm"].update(host=mllp.host, port=mllp.port)
        edit(tmp_path / "acme.yaml", fill)
        yield tmp_path, {"epic": epic, "fhir": fhir, "athena": athena, "mllp": mllp}


def _check(config_dir: Path):
    r = run("check", "acme", "--json", "--config-dir", str(config_dir))
    return r.exit_code, json.loads(r.output)


def test_new_org_from_init_to_green_check(onboarded):
    # Given the filled skeleton (no code change) and the simulators
    config_dir, sims = onboarded
    # When org check runs
    code, report = _check(config_dir)
    # Then every step passed, for every target, and nothing was written to any EHR
    assert code == 0, [c for c in report["checks"] if not c["ok"]]
    names = {(c["target"], c["name"]) for c in report["checks"]}
    assert {("epic_haiku", "backend token"), ("epic_haiku", "inbound JWKS"),
            ("fhir_docref", "SMART discovery"), ("fhir_docref", "backend token"),
            ("athenaone", "token"), ("athenaone", "practice read"),
            ("hl7_mdm", "MLLP connect"), ("mappings", "sections and note types")} <= names
    assert sims["athena"].upload_count() == 0 and sims["mllp"].stats()["documents"] == 0
    # And the human checklist says so
    r = run("check", "acme", "--config-dir", str(config_dir))
    assert r.exit_code == 0 and "[FAIL]" not in r.output and "0 failed" in r.output


def _failures(report):
    return {(c["target"], c["name"]): c for c in report["checks"] if not c["ok"]}


def test_check_names_each_broken_piece(onboarded, monkeypatch):
    config_dir, sims = onboarded
    # Given: a missing env secret (epic), a bad key file (fhir), a refused athena secret,
    # an unreachable MLLP port, and a note type without an athena mapping
    monkeypatch.delenv("ACME_EPIC_PRIVATE_KEY")
    (config_dir / "keys/fhir.pem").write_text("not a pem")
    monkeypatch.setenv("ACME_ATHENA_SECRET", "wrong-pass")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead_port = s.getsockname()[1]              # bound, never listening: refused

    def breakit(doc):
        doc["targets"]["hl7_mdm"]["port"] = dead_port
        doc["note_types"]["allowed"] = ["11506-3", "34117-2"]
    edit(config_dir / "acme.yaml", breakit)
    # When org check runs
    code, report = _check(config_dir)
    fails = _failures(report)
    # Then it exits 1 and each failure carries its reason and a fix
    assert code == 1
    epic = fails[("epic_haiku", "secret private_key")]
    assert "env:ACME_EPIC_PRIVATE_KEY" in epic["detail"] and "ACME_EPIC_PRIVATE_KEY" in epic["fix"]
    assert "not a RS384" in fails[("fhir_docref", "signing key")]["detail"]
    athena = fails[("athenaone", "token")]
    assert "refused" in athena["detail"] and "401" in athena["detail"]
    assert "wrong-pass" not in json.dumps(report)
    mllp = fails[("hl7_mdm", "MLLP connect")]
    assert f"127.0.0.1:{dead_port}" in mllp["detail"] and "ConnectionRefused" in mllp["detail"]
    unmapped = fails[("mappings", "note_types.allowed.1")]
    assert "athena" in unmapped["detail"]
    # And the parts that are fine still pass
    assert not any(c["target"] == "epic_haiku" and c["name"] == "inbound JWKS" and not c["ok"]
                   for c in report["checks"])


def test_check_token_refused_and_endpoint_unreachable(onboarded):
    config_dir, sims = onboarded
    # Given the Epic site no longer knows our client, and the FHIR server went away
    sims["epic"]._clients.clear()
    fhir_url = sims["fhir"].base_url
    sims["fhir"].stop()
    # When org check runs
    code, report = _check(config_dir)
    fails = _failures(report)
    # Then the refusal and the unreachable endpoint are each named, with a fix
    assert code == 1
    refused = fails[("epic_haiku", "backend token")]
    assert "refused" in refused["detail"] and "registered" in refused["fix"]
    down = fails[("fhir_docref", "SMART discovery")]
    assert "ConnectError" in down["detail"] and fhir_url in down["fix"]


def test_check_reports_every_failing_item_not_just_each_targets_first(onboarded, tmp_path):
    config_dir, sims = onboarded
    # Given the FHIR server is down AND our FHIR private key is missing, and the MLLP
    # receiver is down AND its TLS CA file is missing
    sims["fhir"].stop()
    (config_dir / "keys/fhir.pem").unlink()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead_port = s.getsockname()[1]

    def breakit(doc):
        doc["targets"]["hl7_mdm"]["port"] = dead_port
        doc["targets"]["hl7_mdm"]["tls"] = {"enabled": True, "ca_file": str(tmp_path / "nope.pem")}
    edit(config_dir / "acme.yaml", breakit)
    # When org check runs
    code, report = _check(config_dir)
    fails = _failures(report)
    # Then each independent failure is reported, not only the first of each target
    assert code == 1
    assert "ConnectError" in fails[("fhir_docref", "SMART discovery")]["detail"]
    assert "file not found" in fails[("fhir_docref", "secret private_key")]["detail"]
    assert "ConnectionRefused" in fails[("hl7_mdm", "MLLP connect")]["detail"]
    assert not fails[("hl7_mdm", "TLS files")]["skipped"]
    # And what could not run is listed as not checked, naming what it waits for
    for name in ("signing key", "backend token", "granted scope"):
        assert fails[("fhir_docref", name)]["skipped"], name
    assert "private_key" in fails[("fhir_docref", "backend token")]["detail"]
    assert fails[("hl7_mdm", "TLS handshake")]["skipped"]
    r = run("check", "acme", "--config-dir", str(config_dir))
    assert "[SKIP] fhir_docref" in r.output and "not checked until those pass" in r.output


def test_check_tls_handshake_against_a_plain_receiver_fails(onboarded, tmp_path):
    config_dir, sims = onboarded
    # Given tls enabled towards the plain-TCP simulator, trusting a self-signed CA
    ca = _self_signed(tmp_path)

    def tls(doc):
        doc["targets"]["hl7_mdm"]["tls"] = {"enabled": True, "ca_file": str(ca)}
        doc["targets"]["hl7_mdm"]["connect_timeout_s"] = 1   # the plain receiver never answers
    edit(config_dir / "acme.yaml", tls)
    # When org check runs
    code, report = _check(config_dir)
    # Then the connect passes and the handshake fails, named
    checks = {(c["target"], c["name"]): c for c in report["checks"]}
    assert checks[("hl7_mdm", "MLLP connect")]["ok"]
    shake = checks[("hl7_mdm", "TLS handshake")]
    assert not shake["ok"] and code == 1 and "ca_file" in shake["fix"]


def _self_signed(tmp_path: Path) -> Path:
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
            .sign(key, hashes.SHA256()))
    path = tmp_path / "ca.pem"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


# --- the shipped examples against the sandbox ---------------------------------------------


def _free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)   # as servers bind
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _shipped_examples(tmp_path: Path, monkeypatch) -> tuple[list, Path]:
    """The shipped example orgs copied as-is into tmp_path (so generated key files stay
    there), their secrets unset, and the env file the sandbox appends to; skips when the
    examples' fixed ports are taken."""
    for name in ("demo-epic.yaml", "demo-multi.yaml"):
        shutil.copy(REPO / "config/orgs" / name, tmp_path / name)
    for port in (8081, 8082, 8083, 2575):
        if not _free(port):
            pytest.skip(f"port {port} is in use (another sandbox running?)")
    for var in ("DEMO_EPIC_PRIVATE_KEY", "DEMO_MULTI_ATHENA_SECRET", "DEMO_MULTI_LLM_KEY"):
        monkeypatch.delenv(var, raising=False)
    orgs = [load_org_file(tmp_path / f"{o}.yaml") for o in ("demo-epic", "demo-multi")]
    env_file = tmp_path / "sandbox.env"
    return orgs, env_file


def test_shipped_example_orgs_pass_against_the_sandbox(tmp_path, monkeypatch):
    # Given the shipped example orgs
    orgs, env_file = _shipped_examples(tmp_path, monkeypatch)
    # When the sandbox starts on the examples' own ports, generating their secrets
    with start_sandbox(orgs, generate=True, env_file=env_file) as sb:
        # Then it serves the four simulators where the examples point
        assert {k[0] for k in sb.sims} == {"epic", "fhir", "athena", "mllp"}
        assert {k[2] for k in sb.sims} == {8081, 8082, 8083, 2575}
        assert "export DEMO_EPIC_PRIVATE_KEY=" in env_file.read_text()
        assert (tmp_path / "secrets/fhir-private-key.pem").is_file()
        # And org check is green for both examples
        for o in ("demo-epic", "demo-multi"):
            eff, _ = load_effective(tmp_path, o, None)
            bad = [c for c in run_checks(eff.org) if not c.ok]
            assert bad == [], bad
    # And after stop the ports are free again
    assert _free(8081) and _free(2575)


# --- contract-test --org -----------------------------------------------------------------


def test_contract_env_maps_org_settings_and_refuses_production(layered, monkeypatch):
    # Given the demo-multi sandbox layer
    monkeypatch.setenv("DEMO_MULTI_ATHENA_SECRET", "sim-secret")
    eff, _ = load_effective(layered, "demo-multi", "sandbox", check_mappings=False)
    # When the suites' environment is derived
    athena, _ = suite_env("athenaone", eff.org.targets["athenaone"])
    mllp, _ = suite_env("hl7_mdm", eff.org.targets["hl7_mdm"])
    fhir, _ = suite_env("fhir_docref", eff.org.targets["fhir_docref"])
    # Then each suite gets the org's endpoints (overlay applied), keys by reference
    assert athena["CHARTBRIDGE_CONTRACT_BASE_URL"] == "http://127.0.0.1:8083"
    assert athena["CHARTBRIDGE_ATHENA_PRACTICE_ID"] == "195901"
    assert mllp["CHARTBRIDGE_CONTRACT_BASE_URL"] == "mllp://127.0.0.1:2575"
    assert fhir["CHARTBRIDGE_FHIR_KEY_REF"] == f"file:{layered / 'secrets/fhir-private-key.pem'}"
    assert _junit_for("r.xml", "hl7_mdm", True) == "r.hl7_mdm.xml"
    # And production is refused before anything runs
    from chartbridge.cli.contract_test import contract_test
    r = CliRunner().invoke(contract_test, ["--org", "demo-multi", "--env", "production",
                                           "--config-dir", str(layered)])
    assert r.exit_code == 1 and "refusing env 'production'" in r.output


def test_an_oracle_health_site_from_init_to_green_check(tmp_path, monkeypatch):
    """A Millennium site is a FHIR target with `profile: oracle-health`: the skeleton `org
    init` writes, with that one line changed, validates and `org check` runs the FHIR
    checks against a server playing that profile."""
    from contract_tests.fhir_docref.simulator import FhirSimulator

    assert run("init", "mill", "--targets", "fhir_docref",
               "--config-dir", str(tmp_path)).exit_code == 0
    pem = _new_private_key("RS384")
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys/fhir.pem").write_text(pem)
    scopes = ["system/DocumentReference.write", "system/DocumentReference.read"]
    with FhirSimulator("oracle-health") as fhir:
        fhir.register_client("mill-fhir", public_jwk(pem, "f1", "RS384"), scopes=scopes)

        def fill(doc):
            doc["targets"]["fhir_docref"].update(
                base_url=fhir.base_url, client_id="mill-fhir", key_id="f1",
                private_key="file:keys/fhir.pem", profile="oracle-health", scopes=scopes)
        edit(tmp_path / "mill.yaml", fill)
        assert run("validate", "--config-dir", str(tmp_path)).exit_code == 0

        r = run("check", "mill", "--json", "--config-dir", str(tmp_path))
        report = json.loads(r.output)
        assert r.exit_code == 0, [c for c in report["checks"] if not c["ok"]]
        ran = {c["name"] for c in report["checks"] if c["target"] == "fhir_docref"}
        assert {"SMART discovery", "backend token", "granted scope"} <= ran

        # A profile that is not a row is refused, naming the field
        edit(tmp_path / "mill.yaml", lambda d: d["targets"]["fhir_docref"].update(profile="millennium"))
        bad = run("validate", "--config-dir", str(tmp_path))
        assert bad.exit_code != 0 and "profile" in bad.output


@pytest.mark.parametrize("vendor,target", [("hl7_mdm", r"mllp://127\.0\.0\.1:2575"),
                                           ("fhir_docref", r"http://127\.0\.0\.1:8082\S*")])
def test_contract_test_org_runs_the_suites_live_against_the_sandbox(tmp_path, monkeypatch, vendor,
                                                                   target):
    # Given the shipped example orgs and `org sandbox` serving their simulators
    orgs, env_file = _shipped_examples(tmp_path, monkeypatch)
    cli = str(Path(sys.executable).with_name("chartbridge"))
    with start_sandbox(orgs, generate=True, env_file=env_file):
        child = {k: v for k, v in os.environ.items() if not k.startswith("CHARTBRIDGE_")}
        for line in env_file.read_text().splitlines():        # what `source sandbox.env` sets
            if line.startswith("export "):
                name, _, value = line[len("export "):].partition("=")
                child[name] = value.strip("'\"")
        # When an implementation team runs one target's suite as the onboarding guide says
        r = subprocess.run([cli, "contract-test", "--org", "demo-multi", "--vendor", vendor,
                            "--config-dir", str(tmp_path)], capture_output=True, text=True,
                           env=child, timeout=600)
    # Then it ran live against the sandbox's receiver: requests went out, scenarios passed
    assert r.returncode == 0, (r.stdout[-3000:], r.stderr[-2000:])
    m = re.search(rf"{vendor} live run against {target}: (\d+) requests, "
                  r"(\d+) scenarios run \(0 failed\)", r.stdout)
    assert m, r.stdout[-3000:]
    assert int(m.group(1)) > 0 and int(m.group(2)) > 0


def test_check_fails_when_the_profile_writes_provenance_the_token_cannot_create(onboarded):
    # Given a us-core site whose configured scopes leave out Provenance (the transaction
    # writes one beside every note, so every write would be refused 403)
    config_dir, _ = onboarded
    edit(config_dir / "acme.yaml", lambda doc: doc["targets"]["fhir_docref"].update(
        scopes=["system/DocumentReference.write", "system/DocumentReference.read"]))
    # When org check runs
    code, report = _check(config_dir)
    # Then the granted-scope step fails and says what to add
    bad = _failures(report)[("fhir_docref", "granted scope")]
    assert code == 1 and "Provenance" in bad["detail"] and "system/Provenance.write" in bad["fix"]
