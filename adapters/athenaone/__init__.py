"""athenaOne clinical-document adapter. Kept tiny: the registry imports it to read SPEC."""
from chartbridge.adapters.athenaone.config import AthenaOneConfig
from chartbridge.adapters.registry import AdapterSpec


def _build(org_config, target_config, services):
    from chartbridge.adapters.athenaone.adapter import build  # httpx etc. on first use
    return build(org_config, target_config, services)


def demo_target_settings(sim) -> dict:
    """The org-config `targets.athenaone` block for a running AthenaSimulator."""
    from chartbridge.adapters.athenaone.adapter import demo_target_settings as settings
    return settings(sim)


SPEC = AdapterSpec(
    name="athenaone",
    config_model=AthenaOneConfig,
    factory=_build,
    needs_approval=True,
    description="athenaOne clinicaldocument",
    resource_kind="clinicaldocument",
)
