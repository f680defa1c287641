"""`chartbridge contract-test` in live mode, typed as a user types it (a subprocess of the
installed CLI), against a FHIR server running in another process (the simulator started
with `chartbridge simulate fhir`, reached only over HTTP: the live run cannot inspect it).

- a run against the server sends it requests, passes, and ends with the summary (printed
  and in the JUnit XML properties), naming the artifacts it created;
- a closed port, wrong credentials, a run with no applicable scenario, a run that sends
  the target nothing, and credentials the suite does not take each exit non-zero with one
  readable line, no traceback.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import httpx
import pytest

CLI = str(Path(sys.executable).with_name("chartbridge"))
SCOPES = ["system/DocumentReference.write", "system/DocumentReference.read", "system/Provenance.write"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, deadline_s: float = 30) -> None:
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"nothing listens on {port} after {deadline_s} s")


@pytest.fixture(scope="module")
def remote_fhir(tmp_path_factory):
    """A FHIR server in another process, with the site's setup done over HTTP: our client
    registered with its public key, a test patient and encounter."""
    from contract_tests.fhir_docref.sandbox import demo_keypair

    port = free_port()
    proc = subprocess.Popen([CLI, "simulate", "fhir", "--port", str(port), "--profile", "us-core"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(port)
        base = f"http://127.0.0.1:{port}"
        pem, jwk = demo_keypair("ES384", kid="live-kid")
        key = tmp_path_factory.mktemp("live") / "key.pem"
        key.write_text(pem)
        with httpx.Client(base_url=base) as http:
            assert http.post("/_sim/clients", json={"client_id": "live-client", "jwks": {"keys": [jwk]},
                                                    "scopes": SCOPES}).status_code == 201
            http.post("/_sim/patients", json={"id": "lp1"}).raise_for_status()
            http.post("/_sim/encounters", json={"id": "le1", "patient_id": "lp1"}).raise_for_status()
        yield {"base": base, "key": f"file:{key}", "port": port}
    finally:
        proc.terminate()
        proc.wait(10)


def contract_test(*args: str, **env: str) -> subprocess.CompletedProcess:
    child = {k: v for k, v in os.environ.items() if not k.startswith("CHARTBRIDGE_")}
    child.update({"CHARTBRIDGE_FHIR_PATIENT_ID": "lp1", "CHARTBRIDGE_FHIR_ENCOUNTER_ID": "le1"}, **env)
    return subprocess.run([CLI, "contract-test", *args], capture_output=True, text=True,
                          env=child, timeout=600)


def one_line_error(result: subprocess.CompletedProcess) -> str:
    assert result.returncode != 0, result.stdout[-2000:]
    assert "Traceback" not in result.stderr + result.stdout
    lines = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_a_live_run_sends_requests_passes_and_reports_what_it_did(remote_fhir, tmp_path):
    junit = tmp_path / "live.xml"
    # When the suite is run against the server with the credentials on the command line
    r = contract_test("--vendor", "fhir_docref", "--base-url", remote_fhir["base"],
                      "--client-id", "live-client", "--key", remote_fhir["key"],
                      "--key-id", "live-kid", "--junit-xml", str(junit), "--", "-k", "sqlite")
    # Then it passes, and the summary says what reached the server and what it created
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr
    assert "live contract run: fhir_docref" in r.stdout
    assert "skipped test_lost_response_after_201_never_files_twice[us-core-sqlite]: " \
           "simulator-only: fault injection" in r.stdout
    # and the shared scenarios (capabilities/scenarios.py) ran live through the FHIR driver
    passed = {c.get("name") for c in ET.parse(junit).getroot().iter("testcase") if not len(c)}
    assert {"test_an_approved_note_files_one_final_artifact[us-core-sqlite]",
            "test_preliminary_then_final[us-core-sqlite]",
            "test_correction_links_to_its_parent[us-core-sqlite-replace]",
            "test_correction_links_to_its_parent[us-core-sqlite-append]",
            "test_stale_update_is_refused_and_the_sites_edit_survives[us-core-sqlite]",
            "test_a_server_validation_refusal_is_permanent_and_says_why[us-core-sqlite]"} <= passed
    props = {p.get("name"): p.get("value") for p in ET.parse(junit).getroot().iter("property")}
    assert int(props["live.requests"]) > 20 and int(props["live.scenarios_run"]) >= 9
    artifacts = json.loads(props["live.artifacts"])
    assert any(a.startswith("DocumentReference/") for a in artifacts)
    # and the server really holds them (asked over HTTP, not through the run)
    docs = httpx.get(f"{remote_fhir['base']}/_sim/documents").json()["documents"]
    assert {f"DocumentReference/{d['id']}" for d in docs} >= \
        {a for a in artifacts if a.startswith("DocumentReference/")}
    assert "fhir_docref live run against" in r.stdout


def test_a_closed_port_fails_with_one_line(tmp_path):
    port = free_port()                      # nothing listens there
    r = contract_test("--vendor", "fhir_docref", "--base-url", f"http://127.0.0.1:{port}",
                      "--client-id", "x", "--key", "env:NOPE", "--key-id", "k")
    line = one_line_error(r)
    assert "preflight" in line and "cannot reach" in line


def test_wrong_credentials_fail_with_one_line(remote_fhir, tmp_path):
    r = contract_test("--vendor", "fhir_docref", "--base-url", remote_fhir["base"],
                      "--client-id", "not-registered", "--key", remote_fhir["key"],
                      "--key-id", "live-kid")
    line = one_line_error(r)
    assert "token endpoint refused client not-registered" in line


def test_a_run_with_no_applicable_scenario_fails(remote_fhir):
    r = contract_test("--vendor", "fhir_docref", "--base-url", remote_fhir["base"],
                      "--client-id", "live-client", "--key", remote_fhir["key"],
                      "--key-id", "live-kid", "--", "-k", "no_such_scenario")
    assert "no scenario applies" in one_line_error(r)


def test_credentials_a_suite_does_not_take_are_refused(remote_fhir):
    # The MLLP suite takes no client id: given one, the run fails instead of ignoring it
    r = contract_test("--vendor", "hl7_mdm", "--base-url", "mllp://127.0.0.1:1",
                      "--client-id", "someone")
    line = one_line_error(r)
    assert "client-id" in line or "preflight" in line


def test_credentials_without_a_target_are_a_usage_error():
    r = contract_test("--vendor", "fhir_docref", "--client-id", "someone")
    assert r.returncode == 2 and "--base-url" in r.stderr


def test_a_run_that_sends_the_target_no_request_fails():
    # Given an MLLP receiver in another process, and only a scenario refused before sending
    port = free_port()
    proc = subprocess.Popen([CLI, "simulate", "mllp", "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(port)
        r = contract_test("--vendor", "hl7_mdm", "--base-url", f"mllp://127.0.0.1:{port}",
                          "--", "-k", "control_characters and sqlite")
        # Then the run passed its scenario but fails: nothing reached the receiver
        assert "1 passed" in r.stdout
        assert "sent no request" in one_line_error(r)
    finally:
        proc.terminate()
        proc.wait(10)
