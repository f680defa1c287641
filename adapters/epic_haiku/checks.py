"""Epic Haiku go-live checks (`chartbridge org check`): the backend token through
`BackendTokenSource`, the inbound JWKS through `InboundVerifier`, and the launch SMART
discovery. Read-only: nothing is written to Epic."""
from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx

from chartbridge.config.schema import OrgConfig
from chartbridge.core.errors import PermanentError
from chartbridge.onboarding.checks import (Check, MemoryTokenCache, secret_check, skipped,
                                          smart_discovery, step)


def check(org: OrgConfig, cfg: Any, http: httpx.Client, clock: Any) -> Iterator[Check]:
    from chartbridge.adapters.epic_haiku.auth import InboundVerifier
    from chartbridge.adapters.epic_haiku.client import BackendTokenSource

    t = "epic_haiku"
    secret = secret_check(t, "private_key", cfg.private_key)
    yield secret
    if secret.ok:
        src = BackendTokenSource(org_id=org.org, client_id=cfg.client_id, token_url=cfg.token_url,
                                 key_id=cfg.key_id, algorithm=cfg.algorithm,
                                 private_key=cfg.private_key.resolve, cache=MemoryTokenCache(clock),
                                 clock=clock, http=http, timeout_s=cfg.timeout_s, scope=cfg.scope)
        key = step(t, "signing key", lambda: (src.assertion(), f"{cfg.algorithm} key signs an assertion")[1],
                    where="targets.epic_haiku.private_key",
                    refused_fix=f"put an {cfg.algorithm} PEM private key at {cfg.private_key.ref} "
                                f"(or set algorithm to match the key)")
        yield key
        if key.ok:
            yield step(t, "backend token", lambda: (src.token(), f"access token from {cfg.token_url}")[1],
                        where=f"targets.epic_haiku.token_url ({cfg.token_url})",
                        refused_fix=f"ask the site to confirm client_id {cfg.client_id!r} is active and "
                                    f"that the public key with kid {cfg.key_id!r} is registered for it")
        else:
            yield skipped(t, "backend token", key)
    else:
        yield skipped(t, "signing key", secret)
        yield skipped(t, "backend token", secret)
    inbound = cfg.inbound
    where = (f"targets.epic_haiku.inbound.jwks_url ({inbound.jwks_url})" if inbound.jwks_url
             else f"targets.epic_haiku.inbound.jwks_file ({inbound.jwks_file})")
    verifier = InboundVerifier(org_id=org.org, issuer=inbound.issuer, replay_guard=None,  # type: ignore[arg-type]
                               clock=clock, jwks_url=inbound.jwks_url, jwks_file=inbound.jwks_file,
                               http=http, timeout_s=cfg.timeout_s)

    def jwks() -> str:
        keys = verifier._keyset()          # the verifier's own fetch + parse
        n = len(getattr(keys, "keys", []) or [])
        if n == 0:
            raise PermanentError("inbound JWKS holds no key")
        return f"inbound JWKS parsed ({n} key(s))"

    yield step(t, "inbound JWKS", jwks, where=where,
                refused_fix="ask the site for Epic's JWKS URL (or save it as a file and set jwks_file)")
    if cfg.fhir_base:
        yield smart_discovery(t, "launch SMART discovery", cfg.fhir_base, http, cfg.timeout_s,
                               "targets.epic_haiku.fhir_base")
