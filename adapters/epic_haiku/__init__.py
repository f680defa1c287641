"""Epic Haiku ambient adapter. Kept tiny: the registry imports it to read SPEC."""
from chartbridge.adapters.epic_haiku.config import EpicHaikuConfig
from chartbridge.adapters.registry import AdapterSpec


def _build(org_config, target_config, services):
    from chartbridge.adapters.epic_haiku.adapter import build     # heavy imports on first use
    return build(org_config, target_config, services)


SPEC = AdapterSpec(
    name="epic_haiku",
    config_model=EpicHaikuConfig,
    factory=_build,
    needs_approval=False,   # drafts go back to Epic, where the clinician reviews and signs
    description="Epic Haiku ambient workflow (inbound events, DocumentationReady)",
)
