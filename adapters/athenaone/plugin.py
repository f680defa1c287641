"""athenaOne's plugin pieces the engine asks the registry for (see adapters/registry.py):
its `org init` block, mapping needs, simulator and contract-suite settings. Light to import:
checks and the simulator load on first use."""
from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field

from chartbridge.adapters.registry import Simulator

MAPPING_NOTE = "note_types: athena_class + athena_subclass (documentsubclass)"

# code-table fields: a note type's athena document class and subclass
NOTE_TYPE_FIELDS = {
    "athena_class": (Literal["clinicaldocument", "encounterdocument"] | None, None),
    "athena_subclass": (Annotated[str, Field(pattern=r"^[A-Z0-9_]+$")] | None, None),
}

SIMULATOR = Simulator(module="contract_tests.athenaone.simulator", default_port=8792,
                      cli_name="athena", summary="athenaOne API")


def mapping_needs(cfg: Any, kind: str, entry: Any) -> list[str]:
    if kind == "note_types" and not (entry.athena_class and entry.athena_subclass):
        return ["athena_class/athena_subclass"]
    return []


def suite_env(cfg: Any) -> tuple[dict[str, str], str | None]:
    """athena's suite takes the secret value: resolved here, given to its process only."""
    env = {"CHARTBRIDGE_CONTRACT_BASE_URL": cfg.base_url,
           "CHARTBRIDGE_CONTRACT_CLIENT_ID": cfg.client_id,
           "CHARTBRIDGE_CONTRACT_KEY": cfg.client_secret.ref,
           "CHARTBRIDGE_ATHENA_TOKEN_URL": cfg.token_url,
           "CHARTBRIDGE_ATHENA_CLIENT_ID": cfg.client_id,
           "CHARTBRIDGE_ATHENA_CLIENT_SECRET": cfg.client_secret.resolve(),
           "CHARTBRIDGE_ATHENA_PRACTICE_ID": cfg.practice_id,
           "CHARTBRIDGE_ATHENA_DEPARTMENT_ID": cfg.department_id}
    if cfg.fallback_subclass:      # the subclass the site's practice takes (never guessed)
        env["CHARTBRIDGE_ATHENA_FALLBACK_SUBCLASS"] = cfg.fallback_subclass
    return env, "set CHARTBRIDGE_ATHENA_PATIENT_ID to a test patient of the practice"


def template(org: str, p: str) -> str:
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


# CHARTBRIDGE_* variables only this vendor's contract suite reads (live-sandbox runs)
SUITE_VARIABLES = {
    "CHARTBRIDGE_ATHENA_CLIENT_SECRET_FOR_TESTS": "athena contract suite: the sandbox client secret",
    **{f"CHARTBRIDGE_ATHENA_{n}": "athenaOne contract suite against a live sandbox (--base-url)"
       for n in ("TOKEN_URL", "CLIENT_ID", "CLIENT_SECRET", "PRACTICE_ID", "DEPARTMENT_ID",
                 "PATIENT_ID", "FALLBACK_SUBCLASS")},
}
