"""FHIR R4 DocumentReference adapter. Kept tiny: the registry imports it to read SPEC, its
plugin."""
from chartbridge.adapters.fhir_docref import plugin
from chartbridge.adapters.fhir_docref.config import FhirDocRefConfig
from chartbridge.adapters.registry import AdapterSpec, Capabilities


def _build(org_config, target_config, services):
    from chartbridge.adapters.fhir_docref.adapter import (
        build,  # httpx, fhir.resources on first use
    )
    return build(org_config, target_config, services)


SPEC = AdapterSpec(
    name="fhir_docref",
    order=20,
    config_model=FhirDocRefConfig,
    factory=_build,
    needs_approval=True,
    description="FHIR R4 DocumentReference create/replace",
    resource_kind="DocumentReference",
    # conditional create is per profile (us-core yes, epic no): see profiles.py
    checks="chartbridge.adapters.fhir_docref.checks:check",
    template=plugin.template,
    mapping_note=plugin.MAPPING_NOTE,
    note_type_fields=plugin.NOTE_TYPE_FIELDS,
    mapping_needs=plugin.mapping_needs,
    simulator=plugin.SIMULATOR,
    sandbox="contract_tests.fhir_docref.sandbox:register",
    suite="contract_tests.fhir_docref",
    suite_env=plugin.suite_env,
    suite_variables=plugin.SUITE_VARIABLES,
)
