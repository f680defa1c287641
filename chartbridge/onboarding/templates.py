"""`chartbridge org init`: a commented org config skeleton for the chosen targets.

The skeleton validates as written (`chartbridge org validate`): URLs point at `*.invalid`
hosts (RFC 2606: never resolvable, so a forgotten placeholder fails `org check` loudly
instead of reaching a real system), credentials are `env:` references named after the org,
and every field a target needs is present with a comment saying what to ask the site for.
Each target's block and its mapping note are its plugin's (`AdapterSpec.template`,
`mapping_note`); targets are written in registry order.
"""
from __future__ import annotations

import os
from pathlib import Path

from chartbridge.config.schema import ORG_ID
from chartbridge.core.errors import ConfigError, InputError, StateConflict

def env_prefix(org: str) -> str:
    return org.upper().replace("-", "_")


def _plugins(targets: list[str]) -> list:
    from chartbridge.adapters.registry import registry

    return [registry.get(t) for t in targets]


def render(org: str, targets: list[str], name: str | None = None) -> str:
    p = env_prefix(org)
    plugins = _plugins(targets)
    uses = "\n".join(f"#   {s.name}: {s.mapping_note or 'no code-table fields'}" for s in plugins)
    blocks = "\n".join(s.template(org, p) for s in plugins if s.template is not None)
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
  approval: required            # required | stage_preliminary (targets written after approval here)
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
    from chartbridge.adapters.registry import registry

    order = [s.name for s in registry.plugins() if s.template is not None]
    unknown = [t for t in names if t not in order]
    if unknown:
        raise InputError(f"unknown target(s) {', '.join(unknown)} (known: {', '.join(order)})",
                         field="targets")
    if len(set(names)) != len(names):
        raise InputError("a target is listed twice", field="targets")
    return [t for t in order if t in names]


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
