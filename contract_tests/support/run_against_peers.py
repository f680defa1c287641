"""Run the live contract suites against the independent peers (peers/README.md), through
the CLI as a site's implementation team types it: `chartbridge contract-test --vendor V
--base-url URL [--client-id … --key env:… --key-id …]`. Used by .ci/run; exits non-zero when
any run fails (a failed scenario, or a run that fails closed).

    .venv/bin/python -m contract_tests.support.run_against_peers [--only fhir|mdm]
        [--reports DIR] [-- PYTEST_ARGS]

The FHIR suite runs once per profile that applies to a plain FHIR R4 server (us-core); the
MDM suite once against the MLLP receiver. Each run's JUnit XML goes to
--reports DIR (default: a temporary folder) as contract-<vendor>[-<profile>].xml.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from contract_tests.support.peers import start_fhir_peer, start_mllp_peer

CLI = str(Path(sys.executable).with_name("chartbridge"))
FHIR_PROFILES = ("us-core",)        # the profiles a plain R4 server plays (docs/vendors/fhir-profiles.md)
KEY_ENV = "PEER_FHIR_PRIVATE_KEY"       # the peer's fresh key, passed by reference (env:)


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("CHARTBRIDGE_CONTRACT_")
            and not k.startswith("CHARTBRIDGE_FHIR_") and not k.startswith("CHARTBRIDGE_HL7_")}


def run(args: list[str], env: dict[str, str], what: str) -> int:
    started = time.monotonic()
    print(f"== {what}: chartbridge {' '.join(a if not a.startswith('env:') else a for a in args)}",
          flush=True)
    code = subprocess.call([CLI, *args], env=env)
    print(f"== {what}: exit {code} in {time.monotonic() - started:.0f} s", flush=True)
    return code


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=("fhir", "mdm"))
    parser.add_argument("--reports", default=None, help="folder for the JUnit XML reports")
    parser.add_argument("pytest_args", nargs="*")
    opts = parser.parse_args(argv)
    reports = Path(opts.reports or tempfile.mkdtemp(prefix="peers-"))
    reports.mkdir(parents=True, exist_ok=True)
    extra = ["--", *opts.pytest_args] if opts.pytest_args else []
    worst = 0
    if opts.only in (None, "fhir"):
        for profile in FHIR_PROFILES:
            with start_fhir_peer() as peer:
                env = {**_clean_env(), KEY_ENV: peer.private_key_pem,
                       "CHARTBRIDGE_FHIR_PROFILE": profile,
                       "CHARTBRIDGE_CONTRACT_TOKEN_URL": peer.token_url,
                       "CHARTBRIDGE_FHIR_PATIENT_ID": peer.patient_id,
                       "CHARTBRIDGE_FHIR_ENCOUNTER_ID": peer.encounter_id}
                worst = max(worst, run(
                    ["contract-test", "--vendor", "fhir_docref", "--base-url", peer.base_url,
                     "--client-id", peer.client_id, "--key", f"env:{KEY_ENV}",
                     "--key-id", peer.key_id,
                     "--junit-xml", str(reports / f"contract-fhir_docref-{profile}.xml"), *extra],
                    env, f"FHIR ({profile}) against the Medplum peer"))
    if opts.only in (None, "mdm"):
        with start_mllp_peer() as peer:
            worst = max(worst, run(
                ["contract-test", "--vendor", "hl7_mdm", "--base-url", f"mllp://{peer.host}:{peer.port}",
                 "--junit-xml", str(reports / "contract-hl7_mdm.xml"), *extra],
                _clean_env(), "HL7 MDM against the MLLP peer"))
    print(f"live runs against the peers: {'passed' if worst == 0 else 'FAILED'} "
          f"(JUnit XML in {reports})", flush=True)
    return worst


if __name__ == "__main__":
    raise SystemExit(main())
