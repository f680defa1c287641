"""`chartbridge contract-test --vendor epic_haiku --base-url URL` checks a site's Epic:
exercised here against a standalone Epic simulator standing in for the site."""
from __future__ import annotations

import subprocess
import sys
import xml.etree.ElementTree as ET

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from joserfc.jwk import RSAKey

from contract_tests.epic_haiku.simulator import EpicSimulator


def test_live_mode_checks_the_sites_token_endpoint_and_keys(tmp_path):
    # Given a "site" that registered our backend client with our public key
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = tmp_path / "backend.pem"
    pem.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption()))
    jwk = RSAKey.import_key(key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)).as_dict()
    jwk.update(kid="live-kid", alg="RS384")
    sim = EpicSimulator(clients={"live-client": {"keys": [jwk]}})
    base = sim.start()
    try:
        # When the implementation team runs the Epic suite against it
        junit = tmp_path / "epic.xml"
        out = subprocess.run(
            [sys.executable, "-m", "chartbridge.cli", "contract-test", "--vendor", "epic_haiku",
             "--base-url", base, "--client-id", "live-client", "--key", f"file:{pem}",
             "--junit-xml", str(junit), "--", "-k", "test_live_"],
            capture_output=True, text=True, timeout=300,
            env={**__import__("os").environ, "CHARTBRIDGE_CONTRACT_KEY_ID": "live-kid"})
        # Then both live checks ran and passed, and the site issued one token
        assert out.returncode == 0, out.stdout[-2000:]
        suite = ET.parse(junit).getroot().find("testsuite")
        assert (int(suite.get("tests")), int(suite.get("skipped")), int(suite.get("failures"))) == (2, 0, 0)
        assert sim.token_requests == 1
    finally:
        sim.stop()
