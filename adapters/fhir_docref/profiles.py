"""What each server profile allows (config `profile`). The adapter asks these, never the
profile name, so a site quirk is one row here.

us-core: a generic FHIR R4 / US Core server. Conditional create (If-None-Exist), transaction
         Bundles, versioned update (If-Match), relatesTo kept; Location absolute and
         versioned, ETag W/"n".
epic:    Epic's DocumentReference.Create (Clinical Notes). docStatus always sent; one inline
         text/plain attachment; context.encounter required; 201 with a RELATIVE Location and
         no body; no ETag; If-None-Exist ignored (a replayed create files a second note); no
         transaction, PUT, PATCH, DELETE, Provenance; the token request carries no scope.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Profile:
    name: str
    conditional_create: bool
    transaction: bool
    update: bool
    relates_to: bool
    provenance: bool
    send_scope: bool
    encounter_required: bool
    plain_text_only: bool
    search_keeps_identifier: bool     # reconcile may trust "no match" as "not there"


PROFILES = {
    "us-core": Profile("us-core", conditional_create=True, transaction=True, update=True,
                       relates_to=True, provenance=True, send_scope=True,
                       encounter_required=False, plain_text_only=False,
                       search_keeps_identifier=True),
    "epic": Profile("epic", conditional_create=False, transaction=False, update=False,
                    relates_to=False, provenance=False, send_scope=False,
                    encounter_required=True, plain_text_only=True,
                    search_keeps_identifier=False),
}


def profile(name: str) -> Profile:
    return PROFILES[name]
