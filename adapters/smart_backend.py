"""SMART Backend Services access tokens, shared by every adapter that needs them (Epic's
Interconnect, FHIR servers).

- Client authentication: `private_key_jwt` (RFC 7523) signed with authlib's
  `private_key_jwt_sign`. authlib's defaults do not fit SMART and are overridden here:
  `sign_jwt_bearer_assertion` sets `exp = iat + 3600` unless given (SMART caps it at 5
  minutes), and `PrivateKeyJWT.sign` writes its generated `jti` into the claims dict it was
  built with, so a reused instance would repeat the jti (the server refuses a replay). Every
  assertion here gets its own claims dict with a fresh jti, an explicit exp = iat + 240 s,
  and a header with `kid` and `typ`.
- Cache: the engine's shared TokenCache (database), per org and client, so every worker uses
  one token; `refresh(rejected)` after a 401 drops it only if it is still the refused one.

A vendor adapter subclasses this for its wording (`vendor`, `config_key`) and its
differences (how the token URL is found, what a refusal is called, what to keep from the
token response).
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

from chartbridge.adapters.http import retry_after_seconds
from chartbridge.core.errors import ConfigError, PermanentError, TransientError
from chartbridge.core.ports import Clock, TokenCache

log = logging.getLogger("chartbridge.smart_backend")

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
ASSERTION_LIFETIME_S = 240      # SMART: exp no more than 5 minutes after now; margin for skew
DEFAULT_TOKEN_TTL_S = 300


def transport_error(what: str, exc: httpx.HTTPError) -> TransientError:
    """A token request that got no HTTP answer changes nothing at the server."""
    kind = "timed out" if isinstance(exc, httpx.TimeoutException) else "failed"
    return TransientError(f"{what} {kind} ({type(exc).__name__})", maybe_delivered=False)


class SmartBackendTokens:
    """Access tokens for one (org, client) by the client-credentials grant."""

    vendor = "SMART"                        # how errors name the server ("Epic", "FHIR")
    config_key = "private_key"              # where the key is configured, for messages
    refusal_error: type[PermanentError] = PermanentError

    def __init__(self, *, org_id: str, client_id: str, key_id: str, algorithm: str,
                 private_key: Callable[[], str] | str, cache: TokenCache, clock: Clock,
                 http: httpx.Client, token_url: str | None, cache_key: str,
                 scope: str | None = None, timeout_s: float = 10.0) -> None:
        if algorithm not in ("RS384", "ES384"):
            raise ConfigError("algorithm must be RS384 or ES384", key="algorithm")
        self.org_id, self.client_id, self.key_id, self.algorithm = org_id, client_id, key_id, algorithm
        self._pem = private_key
        self._key: RSAKey | ECKey | None = None
        self.cache, self.clock, self.http, self.timeout = cache, clock, http, timeout_s
        self._token_url, self.scope, self.cache_key = token_url, scope, cache_key
        self._lock = threading.Lock()

    @property
    def token_url(self) -> str:
        return self._token_url

    # -- the signed client assertion ------------------------------------------------------
    def _signing_key(self) -> RSAKey | ECKey:
        if self._key is None:
            try:
                pem = self._pem() if callable(self._pem) else self._pem
            except ConfigError as exc:
                raise PermanentError(f"{self.vendor} private key unavailable: {exc.message}",
                                     vendor_code="private_key") from None
            cls = RSAKey if self.algorithm == "RS384" else ECKey
            try:
                self._key = cls.import_key(pem)
            except (JoseError, ValueError, TypeError):
                raise PermanentError(f"{self.vendor} private key is not a {self.algorithm} "
                                     f"PEM private key ({self.config_key})",
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
        """A valid access token: the shared cached one, or a new one."""
        cached = self.cache.get(self.org_id, self.cache_key)
        if cached:
            return cached
        with self._lock:
            cached = self.cache.get(self.org_id, self.cache_key)
            return cached or self._counted("fetch")

    def refresh(self, rejected: str | None) -> str:
        """After the server refused `rejected` (401): a different token, fetched unless
        another worker already replaced it in the shared cache."""
        with self._lock:
            cached = self.cache.get(self.org_id, self.cache_key)
            if cached and cached != rejected:
                return cached
            self.cache.invalidate(self.org_id, self.cache_key)
            return self._counted("refresh")

    def _counted(self, reason: str) -> str:
        """`_fetch`, counted in chartbridge_token_requests_total (issue 17)."""
        from chartbridge.metrics import counted_token_request
        with counted_token_request(self.org_id, self.vendor.lower(), reason):
            return self._fetch()

    def _refusal(self, resp: httpx.Response) -> PermanentError:
        error = None
        try:
            body = resp.json()
            if isinstance(body, dict) and isinstance(body.get("error"), str):
                error = body["error"][:64]
        except ValueError:
            pass
        return self.refusal_error(f"{self.vendor} token endpoint refused the client (HTTP "
                                  f"{resp.status_code}{' ' + error if error else ''})",
                                  status=resp.status_code, vendor_code=error)

    def _accepted(self, body: dict[str, Any]) -> None:
        """Hook: what a subclass keeps from a token response (e.g. the granted scope)."""

    def _fetch(self) -> str:
        form: dict[str, Any] = {"grant_type": "client_credentials",
                                "client_assertion_type": ASSERTION_TYPE,
                                "client_assertion": self.assertion()}
        if self.scope:
            form["scope"] = self.scope
        try:
            resp = self.http.post(self.token_url, data=form, timeout=self.timeout,
                                  headers={"Accept": "application/json"})
        except httpx.HTTPError as exc:
            raise transport_error(f"{self.vendor} token request", exc) from None
        if resp.status_code == 429 or resp.status_code >= 500:
            raise TransientError(f"{self.vendor} token endpoint answered HTTP {resp.status_code}",
                                 status=resp.status_code, maybe_delivered=False,
                                 retry_after=retry_after_seconds(resp.headers.get("Retry-After"),
                                                                 self.clock.now()))
        if resp.status_code != 200:
            raise self._refusal(resp)
        try:
            body = resp.json()
            token = body["access_token"]
            ttl = float(body.get("expires_in") or DEFAULT_TOKEN_TTL_S)
        except (ValueError, KeyError, TypeError, AttributeError):
            raise PermanentError(f"{self.vendor} token response has no access_token",
                                 status=resp.status_code, vendor_code="no_token") from None
        if not isinstance(token, str) or not token:
            raise PermanentError(f"{self.vendor} token response has no access_token",
                                 status=resp.status_code, vendor_code="no_token")
        self._accepted(body)
        self.cache.put(self.org_id, self.cache_key, token,
                       self.clock.now() + timedelta(seconds=ttl))
        log.info("token fetched", extra={"org_id": self.org_id, "target": self.vendor})
        return token
