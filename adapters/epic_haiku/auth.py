"""Who is calling: verification of Epic's inbound `Authorization: Bearer <JWT>`.

Per /work/shared/vendors/epic-haiku-ambient.md every inbound call carries a JWT signed by
the site's Epic key (RS384 or ES384), verified against the org's JWKS, with `iss` = the
org's Epic client id, `aud` = the URL called, `exp` at most 5 minutes ahead and a `jti`
never seen before for that org (Epic signs a fresh token per delivery, retries included).

JOSE comes from joserfc, the successor of authlib's JOSE by the same author: the
installed authlib 1.9 marks `authlib.jose` deprecated ("please use joserfc instead") and
depends on joserfc itself. Signature checking is joserfc's; every claim is checked here
by hand so each failure names the check that failed (never the token).
"""
from __future__ import annotations

import base64
import binascii
import json
import logging
import threading
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import httpx
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet

from chartbridge.core.errors import InputError, TransientError
from chartbridge.core.ports import Clock, ReplayGuard

log = logging.getLogger("chartbridge.epic_haiku.auth")

ALLOWED_ALGS = ("RS384", "ES384")
MAX_LIFETIME_S = 300          # `exp` at most 5 minutes ahead
DEFAULT_SKEW_S = 30           # clock skew tolerated on exp/iat
JWKS_TTL_S = 3600             # a fetched JWKS is trusted this long
MIN_REFETCH_S = 30            # an unknown kid refetches at most this often (no fetch storms)
MAX_TOKEN_BYTES = 8 * 1024    # a bearer JWT larger than this is refused unread
MAX_HEADER_BYTES = 1024       # its JOSE header segment (base64), before any decoding
MAX_JTI_CHARS = 200           # the replay table's column


class Unauthorized(InputError):
    """The caller could not be verified: answered 401. The message says which check failed."""

    code = "unauthorized"
    http_status = 401

    def __init__(self, message: str, *, check: str) -> None:
        super().__init__(message, field="Authorization", check=check)
        self.check = check


class KeysUnavailable(TransientError):
    """Epic's signing keys could not be loaded: our side (or the network) failed, not the
    caller. Answered 503 so Epic delivers again later."""

    code = "keys_unavailable"
    http_status = 503

    def __init__(self, message: str) -> None:
        super().__init__(message, maybe_delivered=False)


def _segment(token: str, index: int, *, max_bytes: int | None = None) -> dict[str, Any]:
    """One JOSE segment as a flat JSON object. Size is checked before decoding, and the
    value must be an object of plain values (a header never nests): a hostile `[[[[...`
    is refused without recursion."""
    try:
        part = token.split(".")[index]
        if max_bytes is not None and len(part) > max_bytes:
            raise Unauthorized("bearer token header is too large", check="format")
        value = json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
    except (IndexError, ValueError, binascii.Error, UnicodeDecodeError, RecursionError):
        raise Unauthorized("bearer token is not a JWT", check="format") from None
    if not isinstance(value, dict):
        raise Unauthorized("bearer token is not a JWT", check="format")
    if any(isinstance(v, (dict, list)) and k not in ("jwk", "crit", "x5c") for k, v in value.items()):
        raise Unauthorized("bearer token header is not a flat JOSE header", check="format")
    return value


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


class InboundVerifier:
    """Verifies Epic's bearer JWTs for one org. Thread-safe; keeps the JWKS in memory.

    Give exactly one of `jwks_url` (fetched with `http`, cached, refetched once when a
    token names an unknown `kid`) or `jwks_file` (read once, re-read on an unknown kid)."""

    def __init__(self, *, org_id: str, issuer: str, replay_guard: ReplayGuard, clock: Clock,
                 jwks_url: str | None = None, jwks_file: Path | str | None = None,
                 http: httpx.Client | None = None, skew_s: float = DEFAULT_SKEW_S,
                 timeout_s: float = 5.0, max_token_bytes: int = MAX_TOKEN_BYTES) -> None:
        if (jwks_url is None) == (jwks_file is None):
            raise ValueError("give exactly one of jwks_url or jwks_file")
        if jwks_url is not None and http is None:
            raise ValueError("jwks_url needs an http client")
        self.org_id, self.issuer = org_id, issuer
        self.replay_guard, self.clock = replay_guard, clock
        self.jwks_url = jwks_url
        self.jwks_file = Path(jwks_file) if jwks_file is not None else None
        self.http, self.skew, self.timeout = http, float(skew_s), timeout_s
        self.max_token_bytes = max_token_bytes
        self._lock = threading.Lock()
        self._keys: KeySet | None = None
        self._loaded_at: datetime | None = None

    # -- keys ---------------------------------------------------------------------------
    def _load(self) -> KeySet:
        if self.jwks_file is not None:
            try:
                data = json.loads(self.jwks_file.read_text(encoding="utf-8"))
            except (OSError, ValueError, UnicodeDecodeError) as exc:
                raise KeysUnavailable(f"inbound JWKS file unreadable ({type(exc).__name__})") from None
        else:
            assert self.http is not None and self.jwks_url is not None
            try:
                resp = self.http.get(self.jwks_url, timeout=self.timeout)
            except httpx.HTTPError as exc:
                raise KeysUnavailable(f"inbound JWKS fetch failed ({type(exc).__name__})") from None
            if resp.status_code != 200:
                raise KeysUnavailable(f"inbound JWKS fetch answered HTTP {resp.status_code}")
            try:
                data = resp.json()
            except ValueError:
                raise KeysUnavailable("inbound JWKS is not JSON") from None
        try:
            return KeySet.import_key_set(data)
        except (JoseError, ValueError, TypeError, KeyError):
            raise KeysUnavailable("inbound JWKS holds no usable key set") from None

    def _keyset(self, *, refresh: bool = False) -> KeySet:
        now = self.clock.now()
        with self._lock:
            stale = (self._loaded_at is None
                     or now - self._loaded_at > timedelta(seconds=JWKS_TTL_S))
            may_refresh = (self._loaded_at is None
                           or now - self._loaded_at >= timedelta(seconds=MIN_REFETCH_S))
            if self._keys is None or stale or (refresh and may_refresh):
                self._keys = self._load()
                self._loaded_at = now
            return self._keys

    def _key_for(self, header: dict[str, Any]):
        alg, kid = header.get("alg"), header.get("kid")
        keys = self._keyset()
        if kid is not None:
            found = self._find(keys, kid)
            if found is None:       # Epic may have rotated its key: refetch once
                found = self._find(self._keyset(refresh=True), kid)
            if found is None:
                raise Unauthorized("token key id is not in the org's JWKS", check="kid")
            return found
        wanted = "RSA" if alg == "RS384" else "EC"
        candidates = [k for k in keys.keys if k.key_type == wanted]
        if len(candidates) != 1:
            raise Unauthorized("token names no key id and the JWKS has no single key for "
                               "its algorithm", check="kid")
        return candidates[0]

    @staticmethod
    def _find(keys: KeySet, kid: str):
        return next((k for k in keys.keys if k.kid == kid), None)

    # -- the check ------------------------------------------------------------------------
    def verify(self, authorization: str | None, url: str) -> dict[str, Any]:
        """The verified claims of the bearer token in `authorization` for a call to `url`.
        Raises Unauthorized (-> 401) naming the failed check, KeysUnavailable (-> 503)."""
        if authorization is not None and len(authorization) > self.max_token_bytes:
            raise Unauthorized("bearer token is too large", check="format")
        scheme, _, token = (authorization or "").strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise Unauthorized("a bearer token is required", check="missing")
        if token.count(".") != 2:
            raise Unauthorized("bearer token is not a JWT", check="format")
        header = _segment(token, 0, max_bytes=MAX_HEADER_BYTES)
        alg = header.get("alg")
        if alg not in ALLOWED_ALGS:
            raise Unauthorized("token algorithm not allowed (RS384 or ES384 only)", check="alg")
        key = self._key_for(header)
        try:
            claims = jwt.decode(token, key, algorithms=[alg]).claims
        except JoseError:
            raise Unauthorized("token signature does not verify", check="signature") from None
        except (ValueError, TypeError, RecursionError):
            raise Unauthorized("token signature does not verify", check="signature") from None
        self._check_claims(claims, url)
        return claims

    def _check_claims(self, claims: dict[str, Any], url: str) -> None:
        now = self.clock.now().timestamp()
        if claims.get("iss") != self.issuer:
            raise Unauthorized("token issuer is not the org's Epic client id", check="iss")
        aud = claims.get("aud")
        if not (aud == url or (isinstance(aud, list) and url in aud)):
            raise Unauthorized("token audience is not the URL called", check="aud")
        exp = claims.get("exp")
        if not _number(exp):
            raise Unauthorized("token has no expiry", check="exp")
        if exp <= now - self.skew:
            raise Unauthorized("token has expired", check="exp")
        if exp > now + MAX_LIFETIME_S + self.skew:
            raise Unauthorized("token expiry is more than 5 minutes ahead", check="exp")
        iat, nbf = claims.get("iat"), claims.get("nbf")
        if iat is not None and (not _number(iat) or iat > now + self.skew):
            raise Unauthorized("token is issued in the future", check="iat")
        if nbf is not None and (not _number(nbf) or nbf > now + self.skew):
            raise Unauthorized("token is not valid yet", check="nbf")
        jti = claims.get("jti")
        if not isinstance(jti, str) or not jti.strip():
            raise Unauthorized("token has no jti", check="jti")
        if len(jti) > MAX_JTI_CHARS or "\x00" in jti:       # seen_tokens.jti is String(200)
            raise Unauthorized("token jti is not a usable id", check="jti")
        if not self.spend(claims):
            raise Unauthorized("token was already used (replay)", check="replay")

    def spend(self, claims: dict[str, Any]) -> bool:
        """Record verified `claims`' jti as used; False if it was used already. Also called
        again, in its own transaction, when the request it came with failed afterwards and
        its transaction (the jti's insert included) was rolled back: a verified token is
        spent whatever became of its request."""
        # remembered until it could no longer pass the exp check anyway
        keep_until = datetime.fromtimestamp(claims["exp"] + self.skew, tz=timezone.utc)
        return self.replay_guard.first_use(self.org_id, claims["jti"], keep_until)
