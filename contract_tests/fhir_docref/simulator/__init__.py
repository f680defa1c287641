"""A FHIR R4 (4.0.1) server subset for DocumentReference write-back, written from the specs
(FHIR R4 http.html / documentreference / provenance / bundle, SMART Backend Services, US Core
"Writing Clinical Notes") and each vendor's public documentation (Epic's notes on
DocumentReference.Create (Clinical Notes); Oracle Health Millennium R4 "Create a document
reference") — never from the adapter's code. One behaviour per profile, chosen at
construction: ``us-core``, ``epic``, ``oracle-health``; each is one row of
:data:`rules.RULES` (see ../README.md for every rule and its source).

Use in-process::

    with FhirSimulator(profile="epic") as sim:
        sim.add_patient("p1"); sim.add_encounter("e1", "p1")
        sim.register_client("client-1", public_jwk, scopes=["system/DocumentReference.c"])
        base = sim.base_url  # FHIR base; token endpoint at sim.token_url

or standalone with :func:`serve`. Controls are also under ``/_sim/...`` (JSON).
Nothing here logs request bodies or identifiers.

Modules: server (routing, interactions, controls, serve), auth (SMART token endpoint and
bearer checks), validation (R4 + profile rules), store (versions and search), faults
(injected failures over the shared queue), rules (the profiles as data), answers and values
(OperationOutcome and FHIR value helpers).
"""

from .answers import FHIR_JSON, FhirAnswer, Issues, fail, issue, outcome
from .auth import (
    ASSERTION_MAX_LIFETIME_S,
    ASSERTION_TYPE,
    SCOPE_RE,
    SUPPORTED_ALGS,
    public_key_from_jwk,
    scope_allows,
)
from .faults import FAULT_CALLS, FAULT_KINDS, Fault, Faults
from .rules import PROFILES, RULES, ServerRules
from .server import FhirSimulator, serve
from .store import ALL_TYPES, SEEDED_TYPES, WRITABLE_TYPES

__all__ = [
    "ALL_TYPES", "ASSERTION_MAX_LIFETIME_S", "ASSERTION_TYPE", "FAULT_CALLS", "FAULT_KINDS",
    "FHIR_JSON", "Fault", "Faults", "FhirAnswer", "FhirSimulator", "Issues", "PROFILES",
    "RULES", "SCOPE_RE", "SEEDED_TYPES", "SUPPORTED_ALGS", "ServerRules", "WRITABLE_TYPES",
    "fail", "issue", "outcome", "public_key_from_jwk", "scope_allows", "serve",
]
