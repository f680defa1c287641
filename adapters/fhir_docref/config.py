"""Settings for a FHIR R4 DocumentReference target (the `targets.fhir_docref` block)."""
from __future__ import annotations

from typing import Literal

from chartbridge.config.types import Name, Scopes, SecretRef, Settings, TimeoutS, Uri, Url


class Coding(Settings):
    system: Uri
    code: Name
    display: Name | None = None


class FhirDocRefConfig(Settings):
    base_url: Url                      # FHIR R4 base, e.g. https://fhir.site.example/R4
    token_url: Url | None = None       # else from {base_url}/.well-known/smart-configuration
    client_id: Name
    private_key: SecretRef             # SMART Backend Services JWT signing key
    key_id: Name
    algorithm: Literal["RS384", "ES384"] = "RS384"
    scopes: Scopes = ["system/DocumentReference.write", "system/DocumentReference.read"]
    profile: Literal["us-core", "epic"] = "us-core"
    content_type: Literal["text/plain", "text/html"] = "text/plain"
    identifier_system: Uri             # URI of our DocumentReference.identifier (dedupe key)
    note_type_coding: Coding | None = None   # site coding used instead of the mapped LOINC type
    timeout_s: TimeoutS = 15.0
