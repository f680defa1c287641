"""Settings for an athenaOne practice (the `targets.athenaone` block)."""
from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from chartbridge.config.types import Id, Scopes, SecretRef, Settings, TimeoutS, Url


class AthenaOneConfig(Settings):
    base_url: Url                      # e.g. https://api.preview.platform.athenahealth.com
    token_url: Url                     # OAuth 2.0 client-credentials token endpoint
    client_id: Id
    client_secret: SecretRef
    practice_id: Id
    department_id: Id
    scopes: Scopes = ["athena/service/Athenanet.MDP.*"]
    payload: Literal["text", "pdf"] = "text"     # document body as text or rendered PDF
    autoclose: bool = False            # close the document on create (skip the inbox)
    priority: Literal[1, 2, 3] = 2     # athena document priority: 1 high, 2 normal, 3 low
    requests_per_second: Annotated[float, Field(gt=0, le=100)] = 5.0
    timeout_s: TimeoutS = 15.0
