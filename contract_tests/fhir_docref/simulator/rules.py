"""What each server profile does, as data: one row per vendor, written from that vendor's
public documentation (cited per row, and in ../README.md), NEVER from the adapter's code or
its Profile table: the simulator must be able to disagree with the adapter.

A rule the docs do not state is chosen conservatively (the stricter or the less helpful
behaviour, so an adapter that passes here does not depend on luck) and marked "silent".
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

LOINC = "http://loinc.org"
XHTML_NS = "http://www.w3.org/1999/xhtml"


@dataclass(frozen=True)
class ServerRules:
    name: str
    # -- interactions -------------------------------------------------------------------
    conditional_create: bool            # If-None-Exist honoured (else ignored: duplicates)
    transaction: bool                   # transaction Bundles at POST [base]
    update: bool                        # PUT /Type/id with If-Match
    creatable: tuple[str, ...]          # resource types a client may create
    scope_param: Literal["required", "ignored"]   # the token request's `scope`
    scope_v1_only: bool                 # only SMART v1 scopes (.read/.write) are granted
    # -- create answer ------------------------------------------------------------------
    location: Literal["absolute-versioned", "relative", "absolute"]
    etag: bool                          # ETag on create, read and update answers
    create_body: Literal["representation", "prefer-only", "empty"]
    id_prefix: str
    # -- DocumentReference rules --------------------------------------------------------
    create_status: tuple[str, ...]      # DocumentReference.status values a create takes
    doc_status: tuple[str, ...]         # docStatus values a write takes
    doc_status_required: bool
    category_required: bool
    encounter_required: bool            # context.encounter 1..1 (exactly one)
    context_required: bool
    period_end_required: bool           # context.period.end
    dates_need_time: bool               # every date given carries a time
    content_entries: Literal["any", "first-kept", "exactly-one"]
    content_types: tuple[str, ...] | None   # accepted attachment MIME types (None: any)
    charset_required: bool              # content_types are then exact contentType values
    xhtml_only: bool                    # the attachment's bytes must be XHTML
    inline_required: bool               # attachment.data required
    max_authors: int | None
    author_practitioner_only: bool      # author: literal Practitioner/<id> references
    type_loinc_or_one_proprietary: bool
    unknown_reference_status: int       # an unknown patient/encounter
    kept_fields: tuple[str, ...] | None  # fields a create stores; the rest is dropped
    text_by_url: bool                   # reads give attachment.url (a Binary), not data
    # -- search -------------------------------------------------------------------------
    docref_search: tuple[str, ...]
    search_needs_one_of: tuple[str, ...] = ()   # a search must carry one of these
    period_needs_ge_and_lt: bool = False


DOCREF_SEARCH = ("_id", "identifier", "patient", "subject", "encounter", "type", "date",
                 "status", "category")

RULES: dict[str, ServerRules] = {r.name: r for r in (
    # FHIR R4 http.html, documentreference.html; US Core DocumentReference profile and
    # "Writing Clinical Notes"; SMART App Launch Backend Services.
    ServerRules(
        "us-core", conditional_create=True, transaction=True, update=True,
        creatable=("DocumentReference", "Provenance", "Binary"), scope_param="required",
        scope_v1_only=False, location="absolute-versioned", etag=True,
        create_body="representation", id_prefix="",
        create_status=("current", "superseded", "entered-in-error"),
        doc_status=("preliminary", "final", "amended", "entered-in-error"),
        doc_status_required=False, category_required=True, encounter_required=False,
        context_required=False, period_end_required=False, dates_need_time=False,
        content_entries="any", content_types=None, charset_required=False, xhtml_only=False,
        inline_required=False, max_authors=None, author_practitioner_only=False,
        type_loinc_or_one_proprietary=False, unknown_reference_status=422, kept_fields=None,
        text_by_url=False, docref_search=DOCREF_SEARCH),
    # Epic's public notes on DocumentReference.Create (Clinical Notes): see ../README.md.
    ServerRules(
        "epic", conditional_create=False, transaction=False, update=False,
        creatable=("DocumentReference",), scope_param="ignored", scope_v1_only=False,
        location="relative", etag=False, create_body="prefer-only", id_prefix="e",
        create_status=("current", "superseded", "entered-in-error"),
        doc_status=("preliminary", "final", "amended", "entered-in-error"),
        doc_status_required=True, category_required=False, encounter_required=True,
        context_required=True, period_end_required=False, dates_need_time=False,
        content_entries="first-kept", content_types=("text/plain",), charset_required=False,
        xhtml_only=False, inline_required=True, max_authors=None,
        author_practitioner_only=False, type_loinc_or_one_proprietary=False,
        unknown_reference_status=404, kept_fields=None, text_by_url=False,
        docref_search=DOCREF_SEARCH),
    # Oracle Health Millennium R4 (docs.oracle.com/en/industries/health/
    # millennium-platform-apis/mfrap/op-documentreference-post.html, its DSTU2 sibling
    # mfdap/op-documentreference-post.html, and the source of fhir.cerner.com
    # millennium/r4 DocumentReference: cerner/fhir.cerner.com
    # lib/resources/r4/document_reference.yaml and content/millennium/r4/foundation/
    # documents/document-reference.md). Each field's source is in ../README.md.
    ServerRules(
        "oracle-health", conditional_create=False,          # silent: treated as ignored
        transaction=False,                                  # silent for DocumentReference
        update=True,                                        # PUT with If-Match documented
        creatable=("DocumentReference",), scope_param="required", scope_v1_only=True,
        location="absolute", etag=True, create_body="empty", id_prefix="",
        create_status=("current",),                         # "Only current is supported"
        doc_status=("final", "amended"),                    # system access
        doc_status_required=True, category_required=False,
        encounter_required=True,                            # "only a single encounter"
        context_required=True, period_end_required=True, dates_need_time=True,
        content_entries="exactly-one",
        # XHTML only, written exactly as the documented values (MIME type and charset)
        content_types=("application/xhtml+xml;charset=utf-8", "text/html;charset=utf-8"),
        charset_required=True, xhtml_only=True, inline_required=True,
        max_authors=1, author_practitioner_only=True, type_loinc_or_one_proprietary=True,
        unknown_reference_status=422,                       # silent
        kept_fields=("resourceType", "status", "docStatus", "type", "subject", "author",
                     "authenticator", "description", "content", "context"),
        text_by_url=True,
        docref_search=("_id", "patient", "encounter", "period", "type", "category"),
        search_needs_one_of=("_id", "patient"), period_needs_ge_and_lt=True),
)}

PROFILES = tuple(RULES)
