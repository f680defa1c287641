"""The FHIR DocumentReference plugin's simulator side: the org-config block for a running
FhirSimulator (`demo_target_settings`, for the demo and the tests) and the sandbox
registration (`org sandbox`, `AdapterSpec.sandbox`): a FHIR simulator (the org's profile)
serving the base_url's path, the org's client registered with its public key, kid and
scopes."""
from __future__ import annotations

from typing import Any

from chartbridge.onboarding.keys import public_jwk
from chartbridge.onboarding.sandbox import host_port, need_loopback, shared_sim


def demo_target_settings(sim: Any, *, key_ref: str = "env:CHARTBRIDGE_FHIR_SIM_KEY",
                         key_id: str = "sim-key-1", client_id: str = "chartbridge-sim",
                         algorithm: str = "ES384") -> dict:
    """The `targets.fhir_docref` block for a running FhirSimulator. The caller registers the
    public key with `sim.register_client(client_id, jwk, scopes=...)` and puts the PEM
    private key where `key_ref` points (see demo_keypair() below)."""
    return {"base_url": sim.base_url, "client_id": client_id, "private_key": key_ref,
            "key_id": key_id, "algorithm": algorithm, "profile": sim.profile,
            "content_type": "text/plain", "identifier_system": "urn:chartbridge:write",
            "timeout_s": 10}


class _FhirPrefix:
    """Serve the FHIR simulator under the org's base path (e.g. /fhir/R4)."""

    def __init__(self, prefix: str, app: Any) -> None:
        self.prefix, self.app = prefix, app

    def __call__(self, environ: dict, start_response: Any) -> Any:
        path = environ.get("PATH_INFO", "")
        if self.prefix and (path == self.prefix or path.startswith(self.prefix + "/")):
            environ = dict(environ, PATH_INFO=path[len(self.prefix):] or "/",
                           SCRIPT_NAME=environ.get("SCRIPT_NAME", "") + self.prefix)
        elif self.prefix:
            start_response("404 Not Found", [("Content-Type", "application/json")])
            return [b'{"error": "not under the FHIR base path"}']
        return self.app(environ, start_response)


def _start(sb: Any, host: str, port: int, prefix: str, profile: str) -> Any:
    from contract_tests.fhir_docref.simulator import FhirSimulator

    sim = FhirSimulator(profile, host=host, port=port)
    sim.start(wrap=lambda app: _FhirPrefix(prefix, app), base_path=prefix)
    sb.stack.callback(sim.stop)
    return sim


SANDBOX_PATIENT, SANDBOX_ENCOUNTER = "sandbox-patient", "sandbox-encounter"


def register(sb: Any, keys: Any, org: Any, cfg: Any) -> None:
    host, port, prefix = host_port(cfg.base_url)
    need_loopback(org, "fhir_docref", host)
    sim = shared_sim(sb, "fhir", host, port, lambda: _start(sb, host, port, prefix, cfg.profile))
    if sim.profile != cfg.profile:
        sb.warnings.append(f"{org.org}: fhir simulator on {host}:{port} already runs profile "
                           f"{sim.profile}, org wants {cfg.profile}")
    # a test patient and encounter for the contract suite (`contract-test --org`), as a
    # site's sandbox has; their ids go where the suite reads them (the env file)
    sim.add_patient(SANDBOX_PATIENT)
    sim.add_encounter(SANDBOX_ENCOUNTER, SANDBOX_PATIENT)
    keys.export("CHARTBRIDGE_FHIR_PATIENT_ID", SANDBOX_PATIENT)
    keys.export("CHARTBRIDGE_FHIR_ENCOUNTER_ID", SANDBOX_ENCOUNTER)
    pem = keys.get(cfg.private_key, "key", cfg.algorithm)
    if pem is not None:
        sim.register_client(cfg.client_id, public_jwk(pem, cfg.key_id, cfg.algorithm),
                            scopes=list(cfg.scopes))
        sb.lines.append(f"  {org.org}: fhir client {cfg.client_id} (kid {cfg.key_id}) at {cfg.base_url}")


def demo_keypair(algorithm: str = "ES384", kid: str = "sim-key-1") -> tuple[str, dict]:
    """(private PEM, public JWK with kid) for a simulator client. Test/demo use only."""
    from joserfc.jwk import ECKey, RSAKey
    key = ECKey.generate_key("P-384") if algorithm == "ES384" else RSAKey.generate_key(2048)
    pem = key.as_pem(private=True).decode()
    jwk = key.as_dict(private=False)
    jwk.update({"kid": kid, "alg": algorithm, "use": "sig"})
    return pem, jwk


SIM_SCOPES = ["system/DocumentReference.write", "system/DocumentReference.read",
              "system/Provenance.write", "system/Patient.read", "system/Encounter.read"]
