"""The HL7 MDM plugin's simulator side: the org-config block for a running HL7MDMSimulator
(`demo_target_settings`, for the demo and the tests) and the sandbox registration
(`org sandbox`, `AdapterSpec.sandbox`): an MLLP receiver on host:port (plain TCP; a TLS
target is reported, not served)."""
from __future__ import annotations

from typing import Any

from chartbridge.onboarding.sandbox import need_loopback, shared_sim


def demo_target_settings(sim: Any) -> dict:
    """The `targets.hl7_mdm` block pointing at a running HL7MDMSimulator (no secrets:
    plain MLLP on 127.0.0.1; for TLS add tls.enabled + ca_file of the simulator's cert)."""
    return {"host": sim.host, "port": sim.port, "timeout_s": 5, "max_resends": 2,
            "sending_application": "CHARTBRIDGE", "sending_facility": "DEMO",
            "receiving_application": getattr(sim, "application", "EHRSIM"),
            "receiving_facility": getattr(sim, "facility", "SIMHOSP"),
            "obx_mode": "per_section", "ack_mode": "original"}


def register(sb: Any, keys: Any, org: Any, cfg: Any) -> None:
    need_loopback(org, "hl7_mdm", cfg.host)
    if cfg.tls.enabled:
        sb.warnings.append(f"{org.org}: hl7_mdm has tls.enabled; the sandbox serves plain MLLP "
                           "only (use an overlay with tls.enabled: false against it)")

    def make() -> Any:
        from contract_tests.hl7_mdm.simulator import HL7MDMSimulator
        sim = HL7MDMSimulator(cfg.host, cfg.port)
        sim.start()
        sb.stack.callback(sim.stop)
        return sim
    shared_sim(sb, "mllp", cfg.host, cfg.port, make)
    sb.lines.append(f"  {org.org}: MLLP receiver {cfg.host}:{cfg.port}")
