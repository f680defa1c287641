"""FHIR DocumentReference go-live checks (`chartbridge org check`): SMART discovery, the
signing key, a backend token and its granted scope, through the adapter's own
`SmartBackendTokens`/`discover_token_url`. Read-only: nothing is written to the server."""
from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx

from chartbridge.config.schema import OrgConfig
from chartbridge.onboarding.checks import Check, MemoryTokenCache, secret_check, skipped, step


def check(org: OrgConfig, cfg: Any, http: httpx.Client, clock: Any) -> Iterator[Check]:
    from chartbridge.adapters.fhir_docref.auth import SmartBackendTokens, discover_token_url
    from chartbridge.adapters.fhir_docref.profiles import for_config

    t = "fhir_docref"
    where = f"targets.fhir_docref.base_url ({cfg.base_url})"
    token_url = cfg.token_url
    if token_url is None:
        found: dict[str, str] = {}

        def discover() -> str:
            found["url"] = discover_token_url(http, cfg.base_url, cfg.timeout_s)
            return f"token endpoint {found['url']} from the SMART configuration"

        disc = step(t, "SMART discovery", discover, where=where,
                     refused_fix="set targets.fhir_docref.token_url, or ask the site to publish "
                                 "/.well-known/smart-configuration")
        token_url = found.get("url")
    else:
        disc = Check(t, "SMART discovery", True, f"token_url set in config ({token_url})")
    yield disc
    # the key is ours: checked whether or not the site answers
    secret = secret_check(t, "private_key", cfg.private_key)
    yield secret
    if not secret.ok:
        yield skipped(t, "signing key", secret)
        yield skipped(t, "backend token", secret, disc)
        yield skipped(t, "granted scope", secret, disc)
        return
    tokens = SmartBackendTokens(org_id=org.org, client_id=cfg.client_id, key_id=cfg.key_id,
                                algorithm=cfg.algorithm, private_key=cfg.private_key.resolve,
                                cache=MemoryTokenCache(clock), clock=clock, http=http,
                                base_url=cfg.base_url,
                                # only the assertion's audience until discovery works; never sent
                                token_url=token_url or f"{cfg.base_url.rstrip('/')}/token",
                                scopes=list(cfg.scopes),
                                send_scope=for_config(cfg).send_scope, timeout_s=cfg.timeout_s)
    key = step(t, "signing key", lambda: (tokens.assertion(), f"{cfg.algorithm} key signs an assertion")[1],
                where="targets.fhir_docref.private_key",
                refused_fix=f"put an {cfg.algorithm} PEM private key at {cfg.private_key.ref} "
                            "(or set algorithm to match the key)")
    yield key
    if not (key.ok and disc.ok):
        yield skipped(t, "backend token", key, disc)
        yield skipped(t, "granted scope", key, disc)
        return
    tok = step(t, "backend token", lambda: (tokens.token(), f"access token from {token_url}")[1],
                where=f"the token endpoint ({token_url})",
                refused_fix=f"ask the site to confirm client_id {cfg.client_id!r}, the public key with kid "
                            f"{cfg.key_id!r} and the scopes {' '.join(cfg.scopes)} are registered")
    yield tok
    if not tok.ok:
        yield skipped(t, "granted scope", tok)
        return
    can_create = tokens.grants("DocumentReference", "c")
    if can_create is False:
        yield Check(t, "granted scope", False, "the token does not grant DocumentReference create",
                    "ask the site to grant system/DocumentReference.write (or .c) to the client")
        return
    # the profile's transaction writes a Provenance beside each note: without create on it
    # every write is refused 403, though the token is fine for the document itself
    if for_config(cfg).provenance and tokens.grants("Provenance", "c") is False:
        yield Check(t, "granted scope", False, "the token does not grant Provenance create, which "
                    f"profile {cfg.profile} writes beside each note",
                    "add system/Provenance.write to targets.fhir_docref.scopes and ask the site "
                    "to grant it to the client")
        return
    yield Check(t, "granted scope", True, "DocumentReference create granted"
                if can_create else "server did not list the granted scope")
