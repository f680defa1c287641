"""Epic Haiku ambient adapter. Kept tiny: the registry imports it to read SPEC."""
from chartbridge.adapters.epic_haiku.config import EpicHaikuConfig
from chartbridge.adapters.registry import AdapterSpec

SPEC = AdapterSpec(
    name="epic_haiku",
    config_model=EpicHaikuConfig,
    needs_approval=False,   # drafts go back to Epic, where the clinician reviews and signs
    description="Epic Haiku ambient workflow (inbound events, DocumentationReady)",
)
