"""Epic Haiku's plugin pieces the engine asks the registry for (see adapters/registry.py):
its `org init` block, inbound endpoints, simulator and contract-suite settings. Light to
import: the endpoints, checks and simulator load on first use."""
from __future__ import annotations

from typing import Any

from chartbridge.adapters.registry import Simulator, SimulatorOption
from chartbridge.config.types import Id

MAPPING_NOTE = "sections: epic_section_id (the site's Epic SectionID when it differs from the LOINC code)"

# code-table fields: the site's Epic SectionID of a section (default: its LOINC code)
SECTION_FIELDS = {"epic_section_id": (Id | None, None)}

SIMULATOR = Simulator(module="contract_tests.epic_haiku.simulator", default_port=8790,
                      cli_name="epic", summary="Epic Haiku ambient (Interconnect + token endpoint)",
                      options=(SimulatorOption("engine_url", "the engine to deliver callbacks to."),))


def blueprints(engine: Any, jobs: Any) -> list[Any]:
    """Epic's inbound Ambient API and the embedded Haiku page (SMART EHR launch)."""
    from chartbridge.adapters.epic_haiku import endpoints, page

    return [endpoints.make_blueprint(engine, jobs), page.make_blueprint(engine, jobs)]


def suite_env(cfg: Any) -> tuple[dict[str, str], str | None]:
    # the Epic suite plays Epic's side against our engine: it always runs on the
    # simulator; the site's endpoints are covered by `chartbridge org check`
    return {}, "the Epic suite runs against the Epic simulator; the site is checked by `org check`"


def template(org: str, p: str) -> str:
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
