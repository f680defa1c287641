"""Settings for one org's Epic Haiku ambient site (the `targets.epic_haiku` block)."""
from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from chartbridge.config.types import FileRef, Id, Name, SecretRef, Settings, TimeoutS, Url


class EpicInbound(Settings):
    """How Epic's calls to us are verified (JWT bearer tokens)."""

    issuer: Name                       # Epic's client id at this site = the JWT `iss`
    jwks_url: Url | None = None        # where Epic publishes its signing keys...
    jwks_file: FileRef | None = None   # ...or a JWKS file we keep (exactly one of the two)

    @model_validator(mode="after")
    def _one_key_source(self) -> "EpicInbound":
        if (self.jwks_url is None) == (self.jwks_file is None):
            raise ValueError("give exactly one of jwks_url or jwks_file")
        return self


class EpicLimits(Settings):
    """How much one inbound Epic call may carry (`targets.epic_haiku.limits`). Past a limit
    the call is answered 413 naming the field; the defaults fit every documented event."""

    max_body_bytes: int = Field(64 * 1024, ge=1024, le=1024 * 1024)
    max_depth: int = Field(8, ge=4, le=32)              # JSON nesting levels
    max_identifiers: int = Field(20, ge=1, le=200)      # PatientIDs / EncounterIDs entries
    max_sections: int = Field(50, ge=1, le=200)         # AllowedNoteSections / Sections
    max_token_bytes: int = Field(8 * 1024, ge=1024, le=64 * 1024)   # the bearer JWT


class EpicHaikuConfig(Settings):
    # outbound: SMART Backend Services client-credentials grant with a JWT assertion
    client_id: Name
    token_url: Url
    private_key: SecretRef             # PEM private key, env:NAME or file:PATH
    key_id: Name                       # `kid` of that key in the JWKS Epic knows
    algorithm: Literal["RS384", "ES384"] = "RS384"
    timeout_s: TimeoutS = 10.0
    scope: Name | None = None          # token request `scope`, when the site asks for one
    # The site's Interconnect Ambient base (a session's CallbackURL). When set, a session's
    # CallbackURL must start with it (our bearer token never goes to another host), and it
    # is the base for calls made without a session CallbackURL at hand.
    callback_url: Url | None = None
    # inbound
    inbound: EpicInbound
    # the embedded Haiku page (SMART EHR launch)
    fhir_base: Url | None = None       # expected `iss` of the launch; discovered when absent
    launch_client_id: Id | None = None  # the web view's SMART client id
    # -- hardening (issue 20): inbound size limits ------------------------------------------
    limits: EpicLimits = EpicLimits()
