"""athenaOne go-live checks (`chartbridge org check`): the client secret, a token through
`TokenSource` and a practice read (`AthenaClient.ping`). Read-only."""
from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx

from chartbridge.config.schema import OrgConfig
from chartbridge.core.errors import PermanentError
from chartbridge.onboarding.checks import Check, MemoryTokenCache, secret_check, skipped, step


def check(org: OrgConfig, cfg: Any, http: httpx.Client, clock: Any) -> Iterator[Check]:
    from chartbridge.adapters.athenaone.client import AthenaClient, Throttle, TokenSource

    t = "athenaone"
    secret = secret_check(t, "client_secret", cfg.client_secret)
    yield secret
    if not secret.ok:
        yield skipped(t, "token", secret)
        yield skipped(t, "practice read", secret)
        return
    tokens = TokenSource(org_id=org.org, practice_id=cfg.practice_id, client_id=cfg.client_id,
                         token_url=cfg.token_url, scopes=list(cfg.scopes),
                         secret=cfg.client_secret.resolve, cache=MemoryTokenCache(clock),
                         clock=clock, http=http, timeout_s=cfg.timeout_s)
    tok = step(t, "token", lambda: (tokens.token(), f"access token from {cfg.token_url}")[1],
                where=f"targets.athenaone.token_url ({cfg.token_url})",
                refused_fix=f"check client_id {cfg.client_id!r} and the secret at {cfg.client_secret.ref}, "
                            f"and that the app holds the scopes {' '.join(cfg.scopes)}")
    yield tok
    if not tok.ok:
        yield skipped(t, "practice read", tok)
        return
    client = AthenaClient(base_url=cfg.base_url, practice_id=cfg.practice_id, tokens=tokens,
                          http=http, throttle=Throttle(cfg.requests_per_second),
                          timeout_s=cfg.timeout_s)

    def ping() -> str:
        if not client.ping():
            raise PermanentError("athena ping did not answer pong")
        return f"practice {cfg.practice_id} answers GET /v1/{cfg.practice_id}/ping"

    yield step(t, "practice read", ping, where=f"targets.athenaone.base_url ({cfg.base_url})",
                refused_fix=f"check practice_id {cfg.practice_id!r} and that the app is enabled for "
                            "that practice")
