"""Epic Haiku ambient adapter. Kept tiny: the registry imports it to read SPEC, its plugin."""
from chartbridge.adapters.epic_haiku import plugin
from chartbridge.adapters.epic_haiku.config import EpicHaikuConfig
from chartbridge.adapters.registry import AdapterSpec, Capabilities


def _build(org_config, target_config, services):
    from chartbridge.adapters.epic_haiku.adapter import build     # heavy imports on first use
    return build(org_config, target_config, services)


SPEC = AdapterSpec(
    name="epic_haiku",
    order=10,
    config_model=EpicHaikuConfig,
    factory=_build,
    needs_approval=False,   # drafts go back to Epic, where the clinician reviews and signs
    description="Epic Haiku ambient workflow (inbound events, DocumentationReady)",
    capabilities=Capabilities(hands_off_drafts=True, handoff_kind="DocumentationReady",
                              notice_kind="AmbientRecordingsProcessed"),
    endpoints=plugin.blueprints,
    checks="chartbridge.adapters.epic_haiku.checks:check",
    template=plugin.template,
    mapping_note=plugin.MAPPING_NOTE,
    section_fields=plugin.SECTION_FIELDS,
    simulator=plugin.SIMULATOR,
    sandbox="contract_tests.epic_haiku.sandbox:register",
    suite="contract_tests.epic_haiku",
    suite_env=plugin.suite_env,
)
