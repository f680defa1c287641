"""`chartbridge keys generate ORG` makes the org's key pairs (by file reference) and prints
the public JWKS a site registers; the engine serves the same public keys at
/orgs/ORG/.well-known/jwks.json, and an assertion signed with the private key verifies
against them."""
from __future__ import annotations

import json
import stat

import yaml
from click.testing import CliRunner
from joserfc import jwt
from joserfc.jwk import KeySet

from chartbridge.bootstrap import bootstrap
from chartbridge.cli import _attach, cli
from chartbridge.web import create_app

_attach()


def run(*args):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)   # stdout, stderr apart


def test_generate_writes_key_files_and_prints_the_public_jwks(tmp_path):
    # Given a new org (its skeleton names env: references for both signing keys)
    assert run("org", "init", "acme", "--targets", "epic_haiku,fhir_docref",
               "--config-dir", str(tmp_path)).exit_code == 0
    doc = yaml.safe_load((tmp_path / "acme.yaml").read_text())
    doc["targets"]["fhir_docref"]["private_key"] = "file:keys/fhir.pem"   # one file: reference
    doc["targets"]["fhir_docref"]["algorithm"] = "ES384"
    (tmp_path / "acme.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    # When the keys are generated
    r = run("keys", "generate", "acme", "--config-dir", str(tmp_path))
    assert r.exit_code == 0, r.output
    jwks = json.loads(r.stdout)
    # Then the file: reference got its key there, the env: one a file beside the org
    fhir_pem, epic_pem = tmp_path / "keys/fhir.pem", tmp_path / "keys/acme-epic_haiku.pem"
    for path in (fhir_pem, epic_pem):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert "PRIVATE KEY" in path.read_text()
    assert "set targets.epic_haiku.private_key: file:keys/acme-epic_haiku.pem" in r.stderr
    # And the JWKS holds each public key with the org's kid and alg, no private member
    kids = {k["kid"]: k for k in jwks["keys"]}
    assert kids[doc["targets"]["fhir_docref"]["key_id"]]["alg"] == "ES384"
    assert kids[doc["targets"]["epic_haiku"]["key_id"]]["alg"] == "RS384"
    assert all("d" not in k and "p" not in k for k in jwks["keys"])
    # And a second run never overwrites a key (one readable line, exit 1)
    again = run("keys", "generate", "acme", "--config-dir", str(tmp_path))
    assert again.exit_code == 1 and "already exists" in again.stderr
    assert "Traceback" not in again.stderr


def test_engine_serves_the_orgs_public_keys_and_they_verify_its_assertions(tmp_path):
    assert run("org", "init", "acme", "--targets", "fhir_docref",
               "--config-dir", str(tmp_path)).exit_code == 0
    doc = yaml.safe_load((tmp_path / "acme.yaml").read_text())
    doc["targets"]["fhir_docref"]["private_key"] = "file:keys/acme-fhir.pem"
    (tmp_path / "acme.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    printed = json.loads(run("keys", "generate", "acme", "--config-dir", str(tmp_path)).stdout)
    engine = bootstrap(database_url=f"sqlite:///{tmp_path / 'e.db'}", config_dir=tmp_path)
    client = create_app(engine).test_client()
    # When a site fetches the org's JWKS URL
    resp = client.get("/orgs/acme/.well-known/jwks.json")
    # Then it gets the same public keys keys generate printed
    assert resp.status_code == 200 and resp.json == printed
    assert "max-age" in resp.headers["Cache-Control"]
    # And an assertion signed with the org's private key verifies against that JWKS
    from joserfc.jwk import RSAKey
    private = RSAKey.import_key((tmp_path / "keys/acme-fhir.pem").read_text())
    kid = doc["targets"]["fhir_docref"]["key_id"]
    token = jwt.encode({"alg": "RS384", "kid": kid}, {"iss": "acme"}, private, algorithms=["RS384"])
    claims = jwt.decode(token, KeySet.import_key_set(resp.json), algorithms=["RS384"]).claims
    assert claims["iss"] == "acme"
    # And an unknown org is a JSON 404, a key that does not resolve a JSON 503
    assert client.get("/orgs/nope/.well-known/jwks.json").status_code == 404
    (tmp_path / "keys/acme-fhir.pem").unlink()
    gone = client.get("/orgs/acme/.well-known/jwks.json")
    assert gone.status_code == 503 and gone.json["error"] == "keys_unavailable"
    engine.db.dispose()
