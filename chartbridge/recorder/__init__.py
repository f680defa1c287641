"""The SMART ambient recorder: a page any FHIR EHR launches (SMART EHR launch), which
records the visit in the browser and sends it through the capture API. See views.py."""
from .views import make_blueprint, page_principal

__all__ = ["make_blueprint", "page_principal"]
