"""HL7 MDM's plugin pieces the engine asks the registry for (see adapters/registry.py): its
`org init` block, mapping needs, simulator and contract-suite settings. Light to import:
checks and the simulator load on first use."""
from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field

from chartbridge.adapters.registry import Simulator
from chartbridge.config.types import Name, Settings

MAPPING_NOTE = "note_types: txa2 (TXA-2); sections: obx3 (OBX-3, per_section mode)"



class Obx3(Settings):
    """A section's OBX-3 observation identifier (per_section mode)."""

    code: Name
    text: Name
    system: Name = "LN"


# code-table fields: a note type's TXA-2 document type, a section's OBX-3
NOTE_TYPE_FIELDS = {"txa2": (Annotated[str, Field(pattern=r"^[A-Z0-9]{1,30}$")] | None, None)}
SECTION_FIELDS = {"obx3": (Obx3 | None, None)}

SIMULATOR = Simulator(module="contract_tests.hl7_mdm.simulator", default_port=2575,
                      cli_name="mllp", summary="HL7 v2 MLLP receiver")


def mapping_needs(cfg: Any, kind: str, entry: Any) -> list[str]:
    """TXA-2 for every note type; OBX-3 for every section when each section is its own OBX."""
    if kind == "note_types" and not entry.txa2:
        return ["txa2"]
    if kind == "sections" and getattr(cfg, "obx_mode", None) == "per_section" \
            and entry.obx3 is None:
        return ["obx3"]
    return []


def suite_env(cfg: Any) -> tuple[dict[str, str], str | None]:
    scheme = "mllps" if cfg.tls.enabled else "mllp"
    env = {"CHARTBRIDGE_CONTRACT_BASE_URL": f"{scheme}://{cfg.host}:{cfg.port}",
           "CHARTBRIDGE_CONTRACT_HOST": cfg.host,
           "CHARTBRIDGE_CONTRACT_PORT": str(cfg.port),
           "CHARTBRIDGE_HL7_RECEIVING_APPLICATION": cfg.receiving_application,
           "CHARTBRIDGE_HL7_RECEIVING_FACILITY": cfg.receiving_facility,
           "CHARTBRIDGE_HL7_SENDING_FACILITY": cfg.sending_facility}
    if cfg.tls.enabled and cfg.tls.ca_file:
        env["CHARTBRIDGE_HL7_CA_FILE"] = str(cfg.tls.ca_file)
    return env, None


def template(org: str, p: str) -> str:
    facility = p[:40]
    return f"""\
  hl7_mdm:
    host: mllp.{org}.invalid                  # CHANGE ME: the site's interface engine
    port: 2575                                # CHANGE ME: its MLLP listener
    tls:
      enabled: false                          # true for MLLP over TLS (then the handshake is checked)
      # ca_file: certs/ca.pem                 # file refs, relative to this folder
      # cert_file: certs/client.pem           # mutual TLS: cert_file and key_file together
      # key_file: certs/client.key
    timeout_s: 30                             # wait this long for the ACK
    max_resends: 3
    sending_application: CHARTBRIDGE          # MSH-3
    sending_facility: {facility}              # MSH-4
    receiving_application: EHR                # CHANGE ME: MSH-5, as the site's engine expects
    receiving_facility: HOSP                  # CHANGE ME: MSH-6
    processing_id: T                          # MSH-11: T (training) until go-live, then P
    obx_mode: per_section                     # per_section | per_note
    ack_mode: original                        # original | enhanced
"""


# CHARTBRIDGE_* variables only this vendor's contract suite reads (live-sandbox runs)
SUITE_VARIABLES = {
    f"CHARTBRIDGE_HL7_{n}": "HL7 MDM contract suite against a live interface engine"
    for n in ("RECEIVING_APPLICATION", "RECEIVING_FACILITY", "SENDING_FACILITY", "CA_FILE")
}
