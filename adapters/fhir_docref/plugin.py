"""FHIR DocumentReference's plugin pieces the engine asks the registry for (see
adapters/registry.py): its `org init` block, mapping needs, simulator and contract-suite
settings. Light to import: checks and the simulator load on first use."""
from __future__ import annotations

from typing import Any

from chartbridge.adapters.fhir_docref.config import Coding
from chartbridge.adapters.registry import Simulator, SimulatorOption

MAPPING_NOTE = "note_types: fhir_type (DocumentReference.type)"

# code-table fields: a note type's DocumentReference.type coding
NOTE_TYPE_FIELDS = {"fhir_type": (Coding | None, None)}

SIMULATOR = Simulator(module="contract_tests.fhir_docref.simulator", default_port=8791,
                      cli_name="fhir", summary="FHIR R4 server (a profile: us-core, epic, oracle-health)",
                      options=(SimulatorOption("profile", "the server profile to play: one of "
                                                          "adapters/fhir_docref/profiles.py"),))


def mapping_needs(cfg: Any, kind: str, entry: Any) -> list[str]:
    """A note type needs a DocumentReference.type coding unless the target fixes one."""
    if kind == "note_types" and getattr(cfg, "note_type_coding", None) is None \
            and entry.fhir_type is None:
        return ["fhir_type"]
    return []


def suite_env(cfg: Any) -> tuple[dict[str, str], str | None]:
    """The suite reads the generic CHARTBRIDGE_CONTRACT_* names first (the ones `contract-test
    --base-url/--client-id/--key/--key-id` sets, so both ways reach it the same) and the
    FHIR ones for what only FHIR has (contract_tests/fhir_docref/live.py)."""
    key = cfg.private_key
    ref = key.ref if key.scheme == "env" else f"file:{key.path}"
    env = {"CHARTBRIDGE_CONTRACT_BASE_URL": cfg.base_url,
           "CHARTBRIDGE_CONTRACT_CLIENT_ID": cfg.client_id,
           "CHARTBRIDGE_CONTRACT_KEY": ref,
           "CHARTBRIDGE_CONTRACT_KEY_ID": cfg.key_id,
           "CHARTBRIDGE_FHIR_PROFILE": cfg.profile,
           "CHARTBRIDGE_FHIR_CLIENT_ID": cfg.client_id,
           "CHARTBRIDGE_FHIR_KEY_REF": ref,
           "CHARTBRIDGE_FHIR_KEY_ID": cfg.key_id,
           "CHARTBRIDGE_FHIR_ALGORITHM": cfg.algorithm}
    if cfg.token_url:
        env["CHARTBRIDGE_FHIR_TOKEN_URL"] = cfg.token_url
        env["CHARTBRIDGE_CONTRACT_TOKEN_URL"] = cfg.token_url
    return env, ("set CHARTBRIDGE_FHIR_PATIENT_ID / _ENCOUNTER_ID to a test patient of the "
                 "sandbox (otherwise the suite creates one, which needs Patient/Encounter write)")


def template(org: str, p: str) -> str:
    return f"""\
  fhir_docref:
    base_url: https://fhir.{org}.invalid/R4   # CHANGE ME: the site's FHIR R4 base
    # token_url: omitted -> discovered from {{base_url}}/.well-known/smart-configuration
    client_id: {org}-fhir-client              # CHANGE ME: our backend client id at the site
    private_key: env:{p}_FHIR_PRIVATE_KEY     # PEM private key (or file:keys/fhir.pem)
    key_id: {org}-fhir-1                      # `kid` of that key in the JWKS the site registered
    algorithm: RS384                          # RS384 | ES384
    scopes: [system/DocumentReference.write, system/DocumentReference.read, system/Provenance.write]
    profile: us-core                          # us-core | epic | oracle-health (docs/vendors/fhir-profiles.md)
    content_type: text/plain                  # text/plain | text/html
    identifier_system: https://{org}.invalid/fhir/sid/note-write   # CHANGE ME: URI of our note identifiers (dedupe)
    timeout_s: 15
"""


# CHARTBRIDGE_* variables only this vendor's contract suite reads (live-sandbox runs)
SUITE_VARIABLES = {
    "CHARTBRIDGE_FHIR_SIM_KEY": "the FHIR contract suite's simulator key",
    "CHARTBRIDGE_FHIR_PEER_KEY": "the private key of the independent FHIR peer's test client "
                                 "(contract_tests/support/peers.py, by reference)",
    **{f"CHARTBRIDGE_FHIR_{n}": "FHIR contract suite against a live sandbox (--base-url)"
       for n in ("TOKEN_URL", "PATIENT_ID", "ENCOUNTER_ID", "KEY_REF", "KEY_ID", "CLIENT_ID",
                 "ALGORITHM", "PROFILE")},
}
