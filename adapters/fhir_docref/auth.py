"""SMART Backend Services tokens for one org's FHIR client: the shared implementation in
adapters/smart_backend.py (assertion signing with authlib's defaults overridden, shared
token cache, one refresh after a 401) plus what differs for FHIR servers:

- Token endpoint: config `token_url`, else `token_endpoint` from
  `{base}/.well-known/smart-configuration` (SMART App Launch 2.x, "Backend Services"),
  fetched once per instance.
- Scope: where the profile's `send_scope` is set (us-core, oracle-health) the configured
  scopes are sent; otherwise (epic) NO scope (Epic
  grants what the client was registered with) and reads the granted scope from the answer.
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import httpx
from chartbridge.adapters.smart_backend import (
    SmartBackendTokens as SharedSmartBackendTokens,
)
from chartbridge.adapters.smart_backend import transport_error
from chartbridge.core.errors import PermanentError, TransientError
from chartbridge.core.ports import Clock, TokenCache

log = logging.getLogger("chartbridge.fhir_docref.auth")



class FhirAuthError(PermanentError):
    """The token endpoint refused this client (bad key, kid, scope or registration)."""

    code = "fhir_auth"


def discover_token_url(http: httpx.Client, base_url: str, timeout_s: float) -> str:
    """`token_endpoint` from the server's SMART configuration."""
    url = base_url.rstrip("/") + "/.well-known/smart-configuration"
    try:
        resp = http.get(url, headers={"Accept": "application/json"}, timeout=timeout_s)
    except httpx.HTTPError as exc:
        raise transport_error("SMART configuration fetch", exc) from None
    if resp.status_code >= 500 or resp.status_code == 429:
        raise TransientError(f"SMART configuration answered HTTP {resp.status_code}",
                             status=resp.status_code, maybe_delivered=False)
    if resp.status_code != 200:
        raise PermanentError(f"SMART configuration not available (HTTP {resp.status_code}); "
                             "set targets.fhir_docref.token_url", status=resp.status_code,
                             vendor_code="no_smart_configuration")
    try:
        endpoint = resp.json().get("token_endpoint")
    except (ValueError, AttributeError):
        endpoint = None
    if not isinstance(endpoint, str) or not endpoint.startswith(("https://", "http://")):
        raise PermanentError("SMART configuration has no token_endpoint; set "
                             "targets.fhir_docref.token_url", vendor_code="no_token_endpoint")
    return endpoint


class SmartBackendTokens(SharedSmartBackendTokens):
    """Access tokens for one (org, FHIR client)."""

    vendor = "FHIR"
    config_key = "targets.fhir_docref.private_key"
    refusal_error = FhirAuthError

    def __init__(self, *, org_id: str, client_id: str, key_id: str, algorithm: str,
                 private_key: Callable[[], str] | str, cache: TokenCache, clock: Clock,
                 http: httpx.Client, base_url: str, token_url: str | None = None,
                 scopes: list[str] | None = None, send_scope: bool = True,
                 timeout_s: float = 15.0) -> None:
        self.base_url, self.scopes, self.send_scope = base_url, list(scopes or []), send_scope
        super().__init__(org_id=org_id, client_id=client_id, key_id=key_id,
                         algorithm=algorithm, private_key=private_key, cache=cache,
                         clock=clock, http=http, token_url=token_url,
                         cache_key=f"fhir_docref:{client_id}",
                         scope=" ".join(self.scopes) if send_scope and self.scopes else None,
                         timeout_s=timeout_s)
        self.granted_scope: str | None = None

    @property
    def token_url(self) -> str:
        """Configured, else `token_endpoint` from the server's SMART configuration."""
        if self._token_url is None:
            self._token_url = discover_token_url(self.http, self.base_url, self.timeout)
        return self._token_url

    def _accepted(self, body: dict[str, Any]) -> None:
        scope = body.get("scope")
        self.granted_scope = scope if isinstance(scope, str) else None

    def grants(self, resource_type: str, perm: str) -> bool | None:
        """Whether the last granted scope allows `perm` (c/r/u/s) on the type; None if the
        server did not say."""
        if not self.granted_scope:
            return None
        v1 = {"c": "write", "u": "write", "d": "write", "r": "read", "s": "read"}[perm]
        for s in self.granted_scope.split():
            if not s.startswith("system/"):
                continue
            rtype, _, what = s[len("system/"):].partition(".")
            if rtype not in (resource_type, "*"):
                continue
            if what in ("*", v1) or (what and set(what) <= set("cruds") and perm in what):
                return True
        return False
