"""HL7 v2 MDM over MLLP adapter. Kept tiny: the registry imports it to read SPEC, its
plugin."""
from chartbridge.adapters.hl7_mdm import plugin
from chartbridge.adapters.hl7_mdm.config import Hl7MdmConfig
from chartbridge.adapters.registry import AdapterSpec, Capabilities


def _build(org_config, target_config, services):
    from chartbridge.adapters.hl7_mdm.adapter import build_adapter   # hl7apy loads on first use
    return build_adapter(org_config, target_config, services)


SPEC = AdapterSpec(
    name="hl7_mdm",
    order=40,
    config_model=Hl7MdmConfig,
    factory=_build,
    needs_approval=True,
    description="HL7 v2.5.1 MDM^T02/T06/T08/T10/T11 over MLLP",
    resource_kind="MDM",
    checks="chartbridge.adapters.hl7_mdm.checks:check",
    template=plugin.template,
    mapping_note=plugin.MAPPING_NOTE,
    section_fields=plugin.SECTION_FIELDS,
    note_type_fields=plugin.NOTE_TYPE_FIELDS,
    mapping_needs=plugin.mapping_needs,
    simulator=plugin.SIMULATOR,
    sandbox="contract_tests.hl7_mdm.sandbox:register",
    suite="contract_tests.hl7_mdm",
    suite_env=plugin.suite_env,
    suite_variables=plugin.SUITE_VARIABLES,
)
