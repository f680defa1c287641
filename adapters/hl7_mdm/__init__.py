"""HL7 v2 MDM over MLLP adapter. Kept tiny: the registry imports it to read SPEC."""
from chartbridge.adapters.hl7_mdm.config import Hl7MdmConfig
from chartbridge.adapters.registry import AdapterSpec


def _build(org_config, target_config, services):
    from chartbridge.adapters.hl7_mdm.adapter import build_adapter   # hl7apy loads on first use
    return build_adapter(org_config, target_config, services)


def demo_target_settings(sim) -> dict:
    """The org-config `targets.hl7_mdm` block for a running simulator (see adapter.py)."""
    from chartbridge.adapters.hl7_mdm.adapter import demo_target_settings as settings
    return settings(sim)


SPEC = AdapterSpec(
    name="hl7_mdm",
    config_model=Hl7MdmConfig,
    factory=_build,
    needs_approval=True,
    description="HL7 v2.5.1 MDM^T02/T06/T08/T10/T11 over MLLP",
    resource_kind="MDM",
)
