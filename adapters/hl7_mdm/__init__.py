"""HL7 v2 MDM over MLLP adapter. Kept tiny: the registry imports it to read SPEC."""
from chartbridge.adapters.hl7_mdm.config import Hl7MdmConfig
from chartbridge.adapters.registry import AdapterSpec

SPEC = AdapterSpec(
    name="hl7_mdm",
    config_model=Hl7MdmConfig,
    needs_approval=True,
    description="HL7 v2.5.1 MDM^T02/T08/T10 over MLLP",
)
