"""What each server profile allows (config `profile`). The adapter asks these attributes,
never the profile's name, so a server is one row here (and a site's quirk a field of it).

us-core:       a generic FHIR R4 / US Core server (Meditech Expanse, NextGen, eClinicalWorks,
               OpenEMR, Veradigm sites start here). Conditional create (If-None-Exist),
               transaction Bundles, versioned update (If-Match), relatesTo kept; Location
               absolute and versioned, ETag W/"n".
epic:          Epic's DocumentReference.Create (Clinical Notes). docStatus always sent; one
               inline text/plain attachment; context.encounter required; 201 with a RELATIVE
               Location and no body; no ETag; If-None-Exist ignored (a replayed create files a
               second note); no transaction, PUT, PATCH, DELETE, Provenance; the token request
               carries no scope.
oracle-health: Oracle Health Millennium R4 "Create a document reference" (docs.oracle.com
               millennium-platform-apis mfrap/op-documentreference-post; fhir.cerner.com
               millennium/r4 DocumentReference). Only the documented body fields are kept
               (identifier and relatesTo are dropped); docStatus final|amended only (no
               preliminary); at most one author, a Practitioner reference; context required
               with one encounter and context.period.end; content exactly one inline XHTML
               attachment with charset; type LOINC or one proprietary coding, not both; 201
               with an absolute unversioned Location and an ETag, no body; no conditional
               create (not documented: treated as ignored); no transaction, no Provenance;
               search by patient/encounter/type/period, no identifier parameter, document text
               behind attachment.url. docs/vendors/fhir-profiles.md cites each rule.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any, Literal

NoteFormat = Literal["text/plain", "xhtml"]


@dataclass(frozen=True)
class Profile:
    name: str
    title: str                        # the servers this row describes (docs, org check)
    conditional_create: bool          # If-None-Exist honoured
    transaction: bool                 # transaction Bundles at POST [base]
    update: bool                      # PUT with If-Match (edit, cancel, supersede a parent)
    relates_to: bool                  # relatesTo kept on a correction
    provenance: bool                  # a Provenance resource is written beside the document
    send_scope: bool                  # the token request carries the configured scopes
    encounter_required: bool          # context.encounter must be sent
    note_format: NoteFormat | None    # forced attachment format; None: config content_type
    preliminary: bool                 # a docStatus=preliminary document may be filed
    max_authors: int | None           # author list length the server takes (None: any)
    author_reference_only: bool       # authors must be literal Practitioner/<id> references
    context_period: bool              # context.period.end (the note's time) is sent
    search_by_identifier: bool        # the server keeps our identifier and searches on it
    search_keeps_identifier: bool     # an identifier search with no match proves absence
    window_search: Literal["date", "period"]    # how the content match narrows by time
    site_type_replaces_loinc: bool    # a non-LOINC site note type is sent alone (not beside)

    def window_params(self, when: datetime, window: timedelta) -> list[tuple[str, str]]:
        """Search parameters for documents dated within `window` of `when`."""
        lo, hi = (when - window).isoformat(), (when + window).isoformat()
        if self.window_search == "period":      # context.period; needs ge AND lt, with a time
            return [("period", f"ge{lo}"), ("period", f"lt{hi}")]
        return [("date", f"ge{lo}")]

    @property
    def reconcile_by_content(self) -> bool:
        """Whether a failed identifier search falls back to matching the text."""
        return not self.search_keeps_identifier


PROFILES: dict[str, Profile] = {p.name: p for p in (
    Profile("us-core", "generic FHIR R4 / US Core server",
            conditional_create=True, transaction=True, update=True, relates_to=True,
            provenance=True, send_scope=True, encounter_required=False, note_format=None,
            preliminary=True, max_authors=None, author_reference_only=False,
            context_period=False, search_by_identifier=True, search_keeps_identifier=True,
            window_search="date", site_type_replaces_loinc=False),
    Profile("epic", "Epic DocumentReference.Create (Clinical Notes)",
            conditional_create=False, transaction=False, update=False, relates_to=False,
            provenance=False, send_scope=False, encounter_required=True,
            note_format="text/plain", preliminary=True, max_authors=None,
            author_reference_only=False, context_period=False, search_by_identifier=True,
            search_keeps_identifier=False, window_search="date",
            site_type_replaces_loinc=False),
    Profile("oracle-health", "Oracle Health Millennium R4 DocumentReference create",
            conditional_create=False, transaction=False, update=False, relates_to=False,
            provenance=False, send_scope=True, encounter_required=True, note_format="xhtml",
            preliminary=False, max_authors=1, author_reference_only=True,
            context_period=True, search_by_identifier=False, search_keeps_identifier=False,
            window_search="period", site_type_replaces_loinc=True),
)}


def profile(name: str) -> Profile:
    return PROFILES[name]


def for_config(config: Any) -> Profile:
    """The profile a target's config selects, with the site's recorded `quirks` applied."""
    base = PROFILES[config.profile]
    quirks = getattr(config, "quirks", None)
    if quirks is None:
        return base
    changes = {k: v for k, v in quirks.model_dump(exclude_none=True).items()}
    return replace(base, **changes) if changes else base
