"""`chartbridge org init`: a commented org config skeleton for the chosen targets.

The skeleton validates as written (`chartbridge org validate`): URLs point at `*.invalid`
hosts (RFC 2606: never resolvable, so a forgotten placeholder fails `org check` loudly
instead of reaching a real system), credentials are `env:` references named after the org,
and every field a target needs is present with a comment saying what to ask the site for.
"""
from __future__ import annotations

import os
from pathlib import Path

from chartbridge.config.schema import ORG_ID
from chartbridge.core.errors import ConfigError, InputError, StateConflict

TARGET_ORDER = ("epic_haiku", "fhir_docref", "athenaone", "hl7_mdm")


def env_prefix(org: str) -> str:
    return org.upper().replace("-", "_")


def _epic(org: str, p: str) -> str:
    return f"""\
  epic_haiku:
    # --- outbound: SMART Backend Services (client credentials + signed JWT assertion) ---
    client_id: {org}-backend-client          # CHANGE ME: our backend client id registered in the site's Epic
    token_url: https://epic.{org}.invalid/interconnect/oauth2/token   # CHANGE ME: the site's OAuth 2.0 token endpoint
    private_key: env:{p}_EPIC_PRIVATE_KEY     # PEM private key (or file:keys/epic.pem); its public half goes to the site
    key_id: {org}-epic-1                      # `kid` of that key in the JWKS we gave the site
    algorithm: RS384                          # RS384 | ES384
    timeout_s: 10
    # callback_url: https://epic.{org}.invalid/interconnect/api/epic/2026/Ambient   # the site's Ambient base (recommended)
    # --- inbound: how Epic's calls to us are verified ---
    inbound:
      issuer: {org}-epic-interconnect         # CHANGE ME: Epic's client id at the site (the JWT `iss`)
      jwks_url: https://epic.{org}.invalid/.well-known/jwks.json   # CHANGE ME: or jwks_file: keys/epic-jwks.json (exactly one)
    # --- the embedded Haiku page (SMART EHR launch) ---
    fhir_base: https://epic.{org}.invalid/api/FHIR/R4   # CHANGE ME: the site's FHIR base (the launch `iss`)
    launch_client_id: {org}-haiku-page        # the web view's SMART client id
"""


def _fhir(org: str, p: str) -> str:
    return f"""\
  fhir_docref:
    base_url: https://fhir.{org}.invalid/R4   # CHANGE ME: the site's FHIR R4 base
    # token_url: omitted -> discovered from {{base_url}}/.well-known/smart-configuration
    client_id: {org}-fhir-client              # CHANGE ME: our backend client id at the site
    private_key: env:{p}_FHIR_PRIVATE_KEY     # PEM private key (or file:keys/fhir.pem)
    key_id: {org}-fhir-1                      # `kid` of that key in the JWKS the site registered
    algorithm: RS384                          # RS384 | ES384
    scopes: [system/DocumentReference.write, system/DocumentReference.read, system/Provenance.write]
    profile: us-core                          # us-core | epic (epic sends no scope)
    content_type: text/plain                  # text/plain | text/html
    identifier_system: https://{org}.invalid/fhir/sid/note-write   # CHANGE ME: URI of our note identifiers (dedupe)
    timeout_s: 15
"""


def _athena(org: str, p: str) -> str:
    return f"""\
  athenaone:
    base_url: https://api.{org}.invalid       # CHANGE ME: e.g. https://api.preview.platform.athenahealth.com
    token_url: https://api.{org}.invalid/oauth2/v1/token   # CHANGE ME: the OAuth 2.0 token endpoint
    client_id: {org}-athena-client            # CHANGE ME: our athena app's client id
    client_secret: env:{p}_ATHENA_SECRET      # client secret by reference (or file:secrets/athena.txt)
    practice_id: "1"                          # CHANGE ME: the site's athena practice id
    department_id: "1"                        # CHANGE ME: department used when a session names none
    scopes: [athena/service/Athenanet.MDP.*]
    payload: text                             # text | pdf
    autoclose: false                          # true = file the document closed (skip the inbox)
    priority: 2                               # 1 high | 2 normal
    requests_per_second: 5                    # stay under the practice's quota
    timeout_s: 15
"""


def _mllp(org: str, p: str) -> str:
    facility = env_prefix(org)[:40]
    return f"""\
  hl7_mdm:
    host: mllp.{org}.invalid                  # CHANGE ME: the site's interface engine
    port: 2575                                # CHANGE ME: its MLLP listener
    tls:
      enabled: false                          # true for MLLP over TLS (then the handshake is checked)
      # ca_file: certs/ca.pem                 # file refs, relative to this folder
      # cert_file: certs/client.pem           # mutual TLS: cert_file and key_file together
      # key_file: certs/client.key
    timeout_s: 30                             # wait this long for the ACK
    max_resends: 3
    sending_application: CHARTBRIDGE          # MSH-3
    sending_facility: {facility}              # MSH-4
    receiving_application: EHR                # CHANGE ME: MSH-5, as the site's engine expects
    receiving_facility: HOSP                  # CHANGE ME: MSH-6
    processing_id: T                          # MSH-11: T (training) until go-live, then P
    obx_mode: per_section                     # per_section | per_note
    ack_mode: original                        # original | enhanced
"""


BLOCKS = {"epic_haiku": _epic, "fhir_docref": _fhir, "athenaone": _athena, "hl7_mdm": _mllp}

_USES = {
    "epic_haiku": "sections: epic_section_id (the site's Epic SectionID when it differs from the LOINC code)",
    "fhir_docref": "note_types: fhir_type (DocumentReference.type)",
    "athenaone": "note_types: athena_class + athena_subclass (documentsubclass)",
    "hl7_mdm": "note_types: txa2 (TXA-2); sections: obx3 (OBX-3, per_section mode)",
}


def render(org: str, targets: list[str], name: str | None = None) -> str:
    p = env_prefix(org)
    uses = "\n".join(f"#   {t}: {_USES[t]}" for t in targets)
    blocks = "\n".join(BLOCKS[t](org, p) for t in targets)
    return f"""\
# Org config for {org}, written by `chartbridge org init`. One file per org: the file name is the org id.
# Lines marked CHANGE ME hold placeholders (hosts under .invalid never resolve); replace them
# with what the site gives you, then:
#   chartbridge org validate            # schema + mappings, reads no secret
#   chartbridge org check {org}        # credentials, tokens, endpoints, mappings (read-only)
#
# Secrets are NEVER written here: a secret field takes `env:NAME` (an environment variable)
# or `file:PATH` (a file; a relative PATH is taken from this folder).
# Per-environment differences go in {org}.sandbox.yaml / {org}.production.yaml beside this
# file (deep-merged over it). The one that applies: --env, else `environment:` below, else
# the engine's CHARTBRIDGE_ENV. See docs/onboarding.md.

org: {org}                      # org id == file name
name: {name or org}             # CHANGE ME: display name for people
timezone: America/New_York      # CHANGE ME: IANA zone of the site
# environment: sandbox          # this org's overlay ({org}.sandbox.yaml), whatever the engine's default

# Clinician sign-in for the review pages (OpenID Connect at the site's identity provider):
# sign_in:
#   oidc:
#     issuer: https://login.{org}.invalid        # CHANGE ME: discovery base of the provider
#     client_id: chartbridge-review               # CHANGE ME: our client id there
#     client_secret: env:{p}_OIDC_SECRET          # omit for a public client (PKCE only)
#     role_claim: role                            # the ID token claim with the clinical role

allowed_sections:               # LOINC section codes drafted by default
  - "10164-2"                   # history of present illness
  - "10187-3"                   # review of systems
  - "29545-1"                   # physical findings
  - "51847-2"                   # assessment and plan

note_types:
  default: "11506-3"            # progress note
  allowed: ["11506-3"]          # note types this org may produce

policy:
  approval: required            # required | stage_preliminary (non-Epic targets)
  consent:
    capture: required           # assumed | required
    write_back: required        # assumed | required
  correction: append            # append | replace, after a final write

transcription:
  hotwords: []                  # site terms that help the transcriber
  # model: base                 # packaged whisper model: base (default) | tiny.en

drafting:
  generator: rules              # rules | llm (then an llm: block with url, model, api_key)
  template: default

# Code tables under mappings/ (chartbridge.mappings). For these targets they supply:
{uses}
# A site-specific value goes under overrides (see config/orgs/demo-*.yaml).
mappings:
  sections: sections
  note_types: note_types
  overrides: {{}}

# Targets: adapter name -> that adapter's settings (see adapters/<name>/config.py and docs/vendors/).
targets:
{blocks}"""


def parse_targets(value: str) -> list[str]:
    names = [t.strip() for t in value.split(",") if t.strip()]
    if not names:
        raise InputError("give at least one target", field="targets")
    unknown = [t for t in names if t not in BLOCKS]
    if unknown:
        raise InputError(f"unknown target(s) {', '.join(unknown)} (known: {', '.join(TARGET_ORDER)})",
                         field="targets")
    if len(set(names)) != len(names):
        raise InputError("a target is listed twice", field="targets")
    return [t for t in TARGET_ORDER if t in names]


def write_skeleton(config_dir: str | Path, org: str, targets: list[str],
                   name: str | None = None) -> Path:
    """Write config_dir/ORG.yaml; refuses an existing org (StateConflict) or a bad id."""
    if not ORG_ID.fullmatch(org) or len(org) > 63:
        raise InputError("org id must be lower-case letters, digits and '-', starting with a "
                         "letter or digit", field="org")
    directory = Path(config_dir)
    path = directory / f"{org}.yaml"
    if path.exists():
        raise StateConflict(f"org {org} already exists ({path}); not overwritten")
    try:
        directory.mkdir(parents=True, exist_ok=True)
        # O_EXCL: never overwrite, even if the file appeared since the check
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        raise StateConflict(f"org {org} already exists ({path}); not overwritten") from None
    except OSError as exc:
        raise ConfigError(f"cannot write the org file ({exc.strerror or type(exc).__name__})",
                          file=str(path)) from None
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(render(org, targets, name))
    return path
