"""SMART Backend Services tokens for one org's FHIR client.

- Token endpoint: config `token_url`, else `token_endpoint` from
  `{base}/.well-known/smart-configuration` (SMART App Launch 2.x, "Backend Services"),
  fetched once per instance.
- Client authentication: `private_key_jwt` (RFC 7523) signed with authlib's
  `private_key_jwt_sign`. authlib's defaults do not fit SMART and are overridden here:
  `sign_jwt_bearer_assertion` sets `exp = iat + 3600` unless given (SMART caps it at 5
  minutes), and `PrivateKeyJWT.sign` writes the generated `jti` into the `claims` dict it was
  built with, so a reused instance would send the SAME jti again (the server refuses a
  replayed jti). Here every assertion gets its own claims dict with a fresh jti, an explicit
  `expires_at` = iat + 240 s, and a header carrying `kid` and `typ`.
- Scope: profile us-core sends the configured scopes; profile epic sends NO scope (Epic
  grants what the client was registered with) and reads the granted scope from the answer.
- Cache: the engine's shared TokenCache (database), per org and client, so every worker uses
  one token; `refresh(rejected)` after a 401 drops it only if it is still the refused one.
"""
from __future__ import annotations

import logging
import secrets
import threading
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import httpx
from authlib.oauth2.rfc7523 import private_key_jwt_sign
from joserfc.errors import JoseError
from joserfc.jwk import ECKey, RSAKey

from chartbridge.core.errors import ConfigError, PermanentError, TransientError
from chartbridge.core.ports import Clock, TokenCache

log = logging.getLogger("chartbridge.fhir_docref.auth")

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
ASSERTION_LIFETIME_S = 240      # SMART: exp no more than 5 minutes after now; margin for skew
DEFAULT_TOKEN_TTL_S = 300


class FhirAuthError(PermanentError):
    """The token endpoint refused this client (bad key, kid, scope or registration)."""

    code = "fhir_auth"


def _transport(what: str, exc: httpx.HTTPError) -> TransientError:
    return TransientError(f"{what} failed ({type(exc).__name__})", maybe_delivered=False)


def discover_token_url(http: httpx.Client, base_url: str, timeout_s: float) -> str:
    """`token_endpoint` from the server's SMART configuration."""
    url = base_url.rstrip("/") + "/.well-known/smart-configuration"
    try:
        resp = http.get(url, headers={"Accept": "application/json"}, timeout=timeout_s)
    except httpx.HTTPError as exc:
        raise _transport("SMART configuration fetch", exc) from None
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


class SmartBackendTokens:
    """Access tokens for one (org, FHIR client)."""

    def __init__(self, *, org_id: str, client_id: str, key_id: str, algorithm: str,
                 private_key: Callable[[], str] | str, cache: TokenCache, clock: Clock,
                 http: httpx.Client, base_url: str, token_url: str | None = None,
                 scopes: list[str] | None = None, send_scope: bool = True,
                 timeout_s: float = 15.0) -> None:
        if algorithm not in ("RS384", "ES384"):
            raise ConfigError("algorithm must be RS384 or ES384", key="algorithm")
        self.org_id, self.client_id, self.key_id, self.algorithm = org_id, client_id, key_id, algorithm
        self._pem = private_key
        self._key: RSAKey | ECKey | None = None
        self.cache, self.clock, self.http = cache, clock, http
        self.base_url, self._token_url = base_url, token_url
        self.scopes, self.send_scope, self.timeout = list(scopes or []), send_scope, timeout_s
        self.cache_key = f"fhir_docref:{client_id}"
        self.granted_scope: str | None = None
        self._lock = threading.Lock()

    # -- the token endpoint -------------------------------------------------------------
    @property
    def token_url(self) -> str:
        if self._token_url is None:
            self._token_url = discover_token_url(self.http, self.base_url, self.timeout)
        return self._token_url

    # -- the client assertion -------------------------------------------------------------
    def _signing_key(self) -> RSAKey | ECKey:
        if self._key is None:
            try:
                pem = self._pem() if callable(self._pem) else self._pem
            except ConfigError as exc:
                raise PermanentError(f"FHIR private key unavailable: {exc.message}",
                                     vendor_code="private_key") from None
            cls = RSAKey if self.algorithm == "RS384" else ECKey
            try:
                self._key = cls.import_key(pem)
            except (JoseError, ValueError, TypeError):
                raise PermanentError(f"FHIR private key is not a {self.algorithm} private key "
                                     "(targets.fhir_docref.private_key)",
                                     vendor_code="private_key") from None
        return self._key

    def assertion(self) -> str:
        """A fresh assertion: iss = sub = client id, aud = token URL, new jti, exp <= 5 min."""
        now = int(self.clock.now().timestamp())
        return private_key_jwt_sign(
            self._signing_key(), client_id=self.client_id, token_endpoint=self.token_url,
            alg=self.algorithm,
            claims={"jti": secrets.token_urlsafe(24), "nbf": now},   # a new dict every time
            header={"alg": self.algorithm, "kid": self.key_id, "typ": "JWT"},
            issued_at=now, expires_at=now + ASSERTION_LIFETIME_S)

    # -- tokens ---------------------------------------------------------------------------
    def token(self) -> str:
        cached = self.cache.get(self.org_id, self.cache_key)
        if cached:
            return cached
        with self._lock:
            cached = self.cache.get(self.org_id, self.cache_key)
            return cached or self._fetch()

    def refresh(self, rejected: str | None) -> str:
        """After a 401: another token (unless another worker already replaced it)."""
        with self._lock:
            cached = self.cache.get(self.org_id, self.cache_key)
            if cached and cached != rejected:
                return cached
            self.cache.invalidate(self.org_id, self.cache_key)
            return self._fetch()

    def _fetch(self) -> str:
        form: dict[str, Any] = {"grant_type": "client_credentials",
                                "client_assertion_type": ASSERTION_TYPE,
                                "client_assertion": self.assertion()}
        if self.send_scope and self.scopes:
            form["scope"] = " ".join(self.scopes)
        try:
            resp = self.http.post(self.token_url, data=form, timeout=self.timeout,
                                  headers={"Accept": "application/json"})
        except httpx.HTTPError as exc:
            raise _transport("FHIR token request", exc) from None
        if resp.status_code == 429 or resp.status_code >= 500:
            raise TransientError(f"FHIR token endpoint answered HTTP {resp.status_code}",
                                 status=resp.status_code, maybe_delivered=False)
        if resp.status_code != 200:
            error = None
            try:
                body = resp.json()
                if isinstance(body, dict) and isinstance(body.get("error"), str):
                    error = body["error"][:64]
            except ValueError:
                pass
            raise FhirAuthError(f"FHIR token endpoint refused the client (HTTP "
                                f"{resp.status_code}{' ' + error if error else ''})",
                                status=resp.status_code, vendor_code=error)
        try:
            body = resp.json()
            token = body["access_token"]
            ttl = float(body.get("expires_in") or DEFAULT_TOKEN_TTL_S)
        except (ValueError, KeyError, TypeError, AttributeError):
            raise PermanentError("FHIR token response has no access_token",
                                 status=resp.status_code, vendor_code="no_token") from None
        if not isinstance(token, str) or not token:
            raise PermanentError("FHIR token response has no access_token",
                                 status=resp.status_code, vendor_code="no_token")
        scope = body.get("scope")
        self.granted_scope = scope if isinstance(scope, str) else None
        self.cache.put(self.org_id, self.cache_key, token,
                       self.clock.now() + timedelta(seconds=ttl))
        log.info("fhir token fetched", extra={"org_id": self.org_id, "expires_in_s": ttl})
        return token

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
