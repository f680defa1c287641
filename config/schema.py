"""The per-org config schema: one YAML file per org under config/orgs/, `<org>.yaml`.

Every section of the file is a frozen pydantic model; unknown keys are errors. The example
files config/orgs/demo-epic.yaml and demo-multi.yaml document each field in comments.
Target blocks are validated by the config model the named adapter declares
(`AdapterSpec.config_model`), looked up in the adapter registry when the schema is first
used, and a code-table override takes the fields the adapters declare
(`AdapterSpec.section_fields` / `note_type_fields`), so adding an adapter needs no change
here.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (AfterValidator, BaseModel, ConfigDict, Field, GetCoreSchemaHandler,
                      create_model, model_validator)
from pydantic_core import PydanticCustomError, core_schema

from chartbridge.config.types import FileRef, Id, Name, SecretRef, Settings, Uri, Url, field_error
from chartbridge.core.models import SECTION_CODES
from chartbridge.webhooks.config import Webhooks

ORG_ID = re.compile(r"[a-z0-9][a-z0-9-]*")
_LOINC = re.compile(r"\d{1,7}-\d")


def _org_id(value: str) -> str:
    if not ORG_ID.fullmatch(value) or len(value) > 63:
        raise PydanticCustomError(
            "org_id", "must be lower-case letters, digits and '-', starting with a letter or digit")
    return value


OrgId = Annotated[str, AfterValidator(_org_id)]


def _loinc(value: str) -> str:
    value = value.strip()
    if not _LOINC.fullmatch(value):
        raise PydanticCustomError("loinc_code", "not a LOINC code (digits-checkdigit, e.g. 11506-3)")
    return value


LoincCode = Annotated[str, AfterValidator(_loinc)]


def _section(value: str) -> str:
    value = value.strip()
    if value not in SECTION_CODES:
        known = ", ".join(SECTION_CODES)
        raise PydanticCustomError("section_code", "unknown section code (known: {known})",
                                  {"known": known})
    return value


SectionCode = Annotated[str, AfterValidator(_section)]


def _timezone(value: str) -> str:
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise PydanticCustomError("timezone", "not an IANA time zone (e.g. America/Chicago)") from None
    return value


def _unique(values: list) -> list:
    seen: set = set()
    for v in values:
        if v in seen:
            raise PydanticCustomError("duplicate", "listed more than once")
        seen.add(v)
    return values


# --- sections ---------------------------------------------------------------------------


class NoteTypes(Settings):
    default: LoincCode                           # note type when the session names none
    # note types this org may produce; empty = only the default
    allowed: Annotated[list[LoincCode], AfterValidator(_unique)] = []

    @model_validator(mode="after")
    def _default_allowed(self) -> "NoteTypes":
        if self.allowed and self.default not in self.allowed:
            raise field_error("default", "must be one of allowed")
        return self

    @property
    def codes(self) -> list[str]:
        return list(self.allowed) or [self.default]


class Consent(Settings):
    capture: Literal["assumed", "required"] = "required"
    write_back: Literal["assumed", "required"] = "required"


class Policy(Settings):
    # non-Epic targets: write only a clinician-approved draft, or stage unapproved ones as
    # preliminary documents
    approval: Literal["required", "stage_preliminary"] = "required"
    consent: Consent = Consent()
    # after a final write: supersede the document, or add an addendum
    correction: Literal["replace", "append"] = "append"


class Transcription(Settings):
    model_dir: FileRef | None = None             # local faster-whisper model folder
    model: Literal["tiny.en", "base"] | None = None  # a packaged model by name (else default)
    hotwords: Annotated[list[Name], AfterValidator(_unique)] = []


class Llm(Settings):
    url: Url                                     # OpenAI-compatible base URL
    model: Name
    api_key: SecretRef | None = None             # none for a local server without auth


class Drafting(Settings):
    generator: Literal["rules", "llm"] = "rules"
    template: Name = "default"                   # a note template name under mappings/templates
    llm: Llm | None = None                       # required when generator is llm

    @model_validator(mode="after")
    def _llm_settings(self) -> "Drafting":
        if self.generator == "llm" and self.llm is None:
            raise field_error("llm", "required when generator is llm")
        return self


def _override_model(kind: str, name: str, generic: dict[str, Any], doc: str) -> type[Settings]:
    """An override of one code-table entry: the generic fields plus every registered
    plugin's fields of that kind (`AdapterSpec.section_fields` / `note_type_fields`), so a
    vendor's codes (e.g. its section id) are declared by its plugin, not here."""
    from chartbridge.adapters.registry import registry

    own = registry.mapping_fields(kind)
    fields = {**generic, **{k: v for k, v in own.items() if k not in generic}}
    model = create_model(name, __base__=Settings, __doc__=doc, **fields)
    model.__module__ = __name__
    return model


SectionOverride = _override_model(
    "sections", "SectionOverride", {"title": (Name | None, None)},
    "Changes to one entry of the sections table for this org only.")
NoteTypeOverride = _override_model(
    "note_types", "NoteTypeOverride", {"name": (Name | None, None)},
    "Changes to one entry of the note types table for this org only.")


TableName = Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_-]*$")]


class MappingOverrides(Settings):
    sections: dict[SectionCode, SectionOverride] = {}
    note_types: dict[LoincCode, NoteTypeOverride] = {}


class Mappings(Settings):
    sections: TableName = "sections"             # mappings/<name>.yaml, kind: sections
    note_types: TableName = "note_types"         # mappings/<name>.yaml, kind: note_types
    overrides: MappingOverrides = MappingOverrides()


# --- clinician sign-in and the active overlay ----------------------------------------------


class OidcSignIn(Settings):
    """The org's identity provider for the review pages (OpenID Connect, code + PKCE)."""

    issuer: Url                                  # discovery base: {issuer}/.well-known/openid-configuration
    client_id: Id                                # our client id at the provider
    client_secret: SecretRef | None = None       # none for a public client (PKCE only)
    role_claim: Name = "role"                    # the ID token claim holding the clinical role


class SignIn(Settings):
    oidc: OidcSignIn | None = None               # none: no sign-in (the dev login only for demo-* orgs)


class Recorder(Settings):
    """The SMART ambient recorder (chartbridge/recorder/): the site's FHIR server that
    launches it (SMART EHR launch) and the recorder's registration at its authorization
    server. Which authorization server that is comes from the FHIR server's
    `/.well-known/smart-configuration`; `authorization_server`, when set, must be the
    issuer that document names (a launch discovering another one is refused)."""

    fhir_base: Url                               # the launch's `iss` must equal it
    client_id: Id                                # the recorder's SMART client id (public, PKCE)
    authorization_server: Url | None = None      # expected issuer of the id_token; none: the discovered one
    chunk_seconds: Annotated[int, Field(ge=2, le=60)] = 8   # the browser cuts a chunk this often
    # what an API session opened from the recorder asks for (absent: the org's defaults)
    note_type: LoincCode | None = None
    sections: Annotated[list[SectionCode], AfterValidator(_unique)] | None = None


# --- the capture API's clients (issue 16) ---------------------------------------------------

ApiScope = Literal["capture", "read", "approve"]


class _JwksRef:
    """`https://...` (an URL, checked as every Url is) or a file reference, never a guess
    between the two: anything with `://` is a URL."""

    def __get_pydantic_core_schema__(self, source: Any, handler: GetCoreSchemaHandler):
        url, path = handler.generate_schema(Url), handler.generate_schema(FileRef)

        return core_schema.union_schema(
            [core_schema.chain_schema([core_schema.no_info_plain_validator_function(
                 _must_be_url), url]),
             core_schema.chain_schema([core_schema.no_info_plain_validator_function(
                 _must_be_file), path])],
            mode="left_to_right", custom_error_type="jwks_ref",
            custom_error_message="must be an https:// URL (http only for 127.0.0.1/localhost) or a "
                                 "file: reference to a JWKS")


def _must_be_url(value: Any) -> Any:
    if not (isinstance(value, str) and "://" in value):
        raise PydanticCustomError("not_url", "not a URL")
    return value


def _must_be_file(value: Any) -> Any:
    if isinstance(value, str) and "://" in value:
        raise PydanticCustomError("not_file", "a URL, not a file")
    return value


class ApiClient(Settings):
    """A capture client: OAuth 2.0 client credentials with a private_key_jwt assertion
    signed by a key in its JWKS (a file, relative to this folder, or an https URL)."""

    client_id: Id
    jwks: Annotated[str | Path, _JwksRef()]      # https://... or file:clients/NAME.jwks.json
    scopes: Annotated[list[ApiScope], Field(min_length=1), AfterValidator(_unique)]


class Api(Settings):
    clients: list[ApiClient] = []
    token_ttl_s: Annotated[int, Field(ge=30, le=3600)] = 300   # short-lived bearer tokens

    def client(self, client_id: str) -> ApiClient | None:
        return next((c for c in self.clients if c.client_id == client_id), None)


def _env_name(value: str) -> str:
    if not re.fullmatch(r"[a-z0-9][a-z0-9-]{0,30}", value):
        raise PydanticCustomError("env_name", "must be lower-case letters, digits and '-' (an "
                                  "overlay name, e.g. sandbox or production)")
    return value


EnvName = Annotated[str, AfterValidator(_env_name)]


# --- targets ----------------------------------------------------------------------------


class _TargetsSchema:
    """`targets:` maps adapter names to that adapter's own config model. Built from the
    registry when OrgConfig's schema is built (deferred to first use), so each error is
    located inside the block (targets.fhir_docref.base_url) and an unknown name is an
    `extra_forbidden` error at targets.<name>."""

    def __get_pydantic_core_schema__(self, source: Any, handler: GetCoreSchemaHandler):
        from chartbridge.adapters.registry import registry

        fields = {
            name: core_schema.typed_dict_field(
                handler.generate_schema(registry.get(name).config_model), required=False)
            for name in registry.names()
        }

        def non_empty(value: dict) -> dict:
            if not value:
                raise PydanticCustomError("no_targets", "at least one target is required")
            return value

        return core_schema.no_info_after_validator_function(
            non_empty, core_schema.typed_dict_schema(fields, extra_behavior="forbid"))


def known_targets() -> list[str]:
    from chartbridge.adapters.registry import registry

    return registry.names()


# --- the org ----------------------------------------------------------------------------


class OrgConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)

    org: OrgId                                   # == the file name's stem
    name: Name                                   # shown to people (CLI, pages)
    # the overlay (ORG.<environment>.yaml) this org runs with; set in the base file only.
    # Wins over the engine's CHARTBRIDGE_ENV; `--env` on the CLI wins over both.
    environment: EnvName | None = None
    timezone: Annotated[str, AfterValidator(_timezone)]
    # sections drafted when Epic's AllowedNoteSections is absent (and for API sessions)
    allowed_sections: Annotated[list[SectionCode], Field(min_length=1), AfterValidator(_unique)]
    note_types: NoteTypes
    policy: Policy = Policy()
    transcription: Transcription = Transcription()
    drafting: Drafting = Drafting()
    mappings: Mappings = Mappings()
    sign_in: SignIn = SignIn()                   # who the clinicians on the review pages are
    recorder: Recorder | None = None             # the SMART ambient recorder page; none: off
    api: Api = Api()                             # the capture API's clients (issue 16)
    # who is told of drafts, writes and failures (chartbridge/webhooks/config.py)
    webhooks: Webhooks = []
    # adapter name -> that adapter's config model instance
    targets: Annotated[dict[str, BaseModel], _TargetsSchema()]

    def target(self, name: str) -> BaseModel:
        from chartbridge.core.errors import NotFound

        try:
            return self.targets[name]
        except KeyError:
            raise NotFound(f"org {self.org!r} has no target {name!r}") from None

    def correction_for(self, target: str) -> str:
        """The correction mode for a target: its own setting if it has one, else the org's."""
        own = getattr(self.targets.get(target), "correction", None)
        return own or self.policy.correction
