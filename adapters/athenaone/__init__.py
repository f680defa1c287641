"""athenaOne clinical-document adapter. Kept tiny: the registry imports it to read SPEC, its
plugin."""
from chartbridge.adapters.athenaone import plugin
from chartbridge.adapters.athenaone.config import AthenaOneConfig
from chartbridge.adapters.registry import AdapterSpec, Capabilities


def _build(org_config, target_config, services):
    from chartbridge.adapters.athenaone.adapter import build  # httpx etc. on first use
    return build(org_config, target_config, services)


SPEC = AdapterSpec(
    name="athenaone",
    order=30,
    config_model=AthenaOneConfig,
    factory=_build,
    needs_approval=True,
    description="athenaOne clinicaldocument",
    resource_kind="clinicaldocument",
    checks="chartbridge.adapters.athenaone.checks:check",
    template=plugin.template,
    mapping_note=plugin.MAPPING_NOTE,
    note_type_fields=plugin.NOTE_TYPE_FIELDS,
    mapping_needs=plugin.mapping_needs,
    simulator=plugin.SIMULATOR,
    sandbox="contract_tests.athenaone.sandbox:register",
    suite="contract_tests.athenaone",
    suite_env=plugin.suite_env,
    suite_variables=plugin.SUITE_VARIABLES,
)
