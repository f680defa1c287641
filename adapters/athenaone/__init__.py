"""athenaOne clinical-document adapter. Kept tiny: the registry imports it to read SPEC."""
from chartbridge.adapters.athenaone.config import AthenaOneConfig
from chartbridge.adapters.registry import AdapterSpec

SPEC = AdapterSpec(
    name="athenaone",
    config_model=AthenaOneConfig,
    needs_approval=True,
    description="athenaOne clinicaldocument",
)
