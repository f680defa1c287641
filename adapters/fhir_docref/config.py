"""Settings for a FHIR R4 DocumentReference target (the `targets.fhir_docref` block)."""
from __future__ import annotations

from typing import Literal

from chartbridge.config.types import (
    Name,
    Scopes,
    SecretRef,
    Settings,
    TimeoutS,
    Uri,
    Url,
)
from pydantic import Field, field_validator, model_validator

from .profiles import PROFILES


class Coding(Settings):
    system: Uri
    code: Name
    display: Name | None = None


class ProfileQuirks(Settings):
    """What this site's server does differently from its profile's row (profiles.py). A
    us-core site (Meditech Expanse, NextGen, eClinicalWorks, OpenEMR, Veradigm...) records
    here what its onboarding found, e.g. `conditional_create: false` for a server that
    ignores If-None-Exist. Unset fields keep the profile's value."""
    conditional_create: bool | None = None
    transaction: bool | None = None
    update: bool | None = None
    relates_to: bool | None = None
    provenance: bool | None = None
    send_scope: bool | None = None
    encounter_required: bool | None = None
    preliminary: bool | None = None
    max_authors: int | None = Field(default=None, ge=1)
    search_by_identifier: bool | None = None
    search_keeps_identifier: bool | None = None


class FhirDocRefConfig(Settings):
    base_url: Url                      # FHIR R4 base, e.g. https://fhir.site.example/R4
    token_url: Url | None = None       # else from {base_url}/.well-known/smart-configuration
    client_id: Name
    private_key: SecretRef             # SMART Backend Services JWT signing key (PEM)
    key_id: Name                       # the `kid` of that key in the JWKS the site registered
    algorithm: Literal["RS384", "ES384"] = "RS384"
    # Requested in the token request where the profile sends a scope (us-core,
    # oracle-health). Create needs write, reconcile needs read (search), the us-core
    # transaction also creates a Provenance. Profile epic sends NO scope: Epic grants what
    # the client was registered with.
    scopes: Scopes = ["system/DocumentReference.write", "system/DocumentReference.read",
                      "system/Provenance.write"]
    # a row of profiles.PROFILES (validated below; the JSON schema lists the rows)
    profile: str = Field(default="us-core", json_schema_extra={"enum": list(PROFILES)})
    quirks: ProfileQuirks | None = None   # this site's departures from the profile's row
    # ignored where the profile forces a format (epic: text/plain; oracle-health: XHTML)
    content_type: Literal["text/plain", "text/html"] = "text/plain"
    identifier_system: Uri             # URI of our DocumentReference.identifier (dedupe key)
    note_type_coding: Coding | None = None   # site coding added beside the mapped LOINC type
    # us-core only: send the DocumentReference and its Provenance in one transaction Bundle
    # (false: a single conditional create, no Provenance resource).
    transaction: bool = True
    # reconcile by content (epic, oracle-health): documents of the encounter dated within
    # this many seconds of ours
    # (and with the same text) count as ours when the server dropped our identifier.
    reconcile_window_s: int = Field(default=900, ge=0, le=86400)
    timeout_s: TimeoutS = 15.0

    @field_validator("profile")
    @classmethod
    def _known_profile(cls, value: str) -> str:
        if value not in PROFILES:
            raise ValueError(f"unknown FHIR profile; expected one of {', '.join(PROFILES)}")
        return value

    @model_validator(mode="after")
    def _coherent_quirks(self) -> "FhirDocRefConfig":
        from .profiles import for_config
        prof = for_config(self)
        if prof.search_keeps_identifier and not prof.search_by_identifier:
            raise ValueError("quirks: search_keeps_identifier needs search_by_identifier "
                             "(no identifier search cannot prove absence)")
        return self
