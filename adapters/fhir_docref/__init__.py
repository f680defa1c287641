"""FHIR R4 DocumentReference adapter. Kept tiny: the registry imports it to read SPEC."""
from chartbridge.adapters.fhir_docref.config import FhirDocRefConfig
from chartbridge.adapters.registry import AdapterSpec

SPEC = AdapterSpec(
    name="fhir_docref",
    config_model=FhirDocRefConfig,
    needs_approval=True,
    description="FHIR R4 DocumentReference create/replace",
)
