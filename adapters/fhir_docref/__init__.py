"""FHIR R4 DocumentReference adapter. Kept tiny: the registry imports it to read SPEC."""
from chartbridge.adapters.fhir_docref.config import FhirDocRefConfig
from chartbridge.adapters.registry import AdapterSpec


def _build(org_config, target_config, services):
    from chartbridge.adapters.fhir_docref.adapter import (
        build,  # httpx, fhir.resources on first use
    )
    return build(org_config, target_config, services)


def demo_target_settings(sim, **kwargs) -> dict:
    """The org-config `targets.fhir_docref` block for a running FhirSimulator."""
    from chartbridge.adapters.fhir_docref.adapter import (
        demo_target_settings as settings,
    )
    return settings(sim, **kwargs)


SPEC = AdapterSpec(
    name="fhir_docref",
    config_model=FhirDocRefConfig,
    factory=_build,
    needs_approval=True,
    description="FHIR R4 DocumentReference create/replace",
    resource_kind="DocumentReference",
)
