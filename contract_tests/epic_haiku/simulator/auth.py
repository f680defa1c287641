"""Epic's keys and tokens: the Epic signing key (RS384 or ES384) whose JWKS it publishes and
with which it signs inbound deliveries, the backend clients registered at the SMART Backend
Services token endpoint (``private_key_jwt`` assertions checked per the page), and the
access tokens it issued for the outbound calls."""
from __future__ import annotations

import base64
import json
import secrets
import threading
import uuid
from pathlib import Path
from typing import Any, Callable

from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import ECKey, KeySet, RSAKey
from werkzeug.wrappers import Response

from chartbridge.core.errors import InputError
from contract_tests.support.http import json_response

from .spec import ASSERTION_TYPE, CLOCK_SKEW_S, MAX_ASSERTION_LIFETIME_S, MAX_TOKENS, SIGNING_ALGS
from .validation import _CallError, _OAuthError, b64url_json


def load_keyset(key: Any, *, field_name: str = "key") -> KeySet:
    """JWKS dict, single JWK dict, PEM (str/bytes), or a joserfc key -> KeySet (public parts)."""
    try:
        if isinstance(key, KeySet):
            return key
        if isinstance(key, (RSAKey, ECKey)):
            return KeySet([key])
        if isinstance(key, dict):
            jwks = key if "keys" in key else {"keys": [key]}
            return KeySet.import_key_set(jwks)
        if isinstance(key, (str, bytes)):
            data = key.encode() if isinstance(key, str) else key
            if data.lstrip().startswith(b"{"):
                return load_keyset(json.loads(data), field_name=field_name)
            for cls in (RSAKey, ECKey):
                try:
                    return KeySet([cls.import_key(data)])
                except (JoseError, ValueError, TypeError):
                    continue
    except (JoseError, ValueError, TypeError, KeyError) as exc:
        raise InputError(f"{field_name} is not a usable JWKS, JWK or PEM public key", field=field_name) from exc
    raise InputError(f"{field_name} is not a usable JWKS, JWK or PEM public key", field=field_name)


def generate_key(alg: str) -> RSAKey | ECKey:
    key = RSAKey.generate_key(2048, private=True) if alg == "RS384" else ECKey.generate_key("P-384", private=True)
    key.ensure_kid()
    return key


def load_epic_key(key: Any, alg: str) -> RSAKey | ECKey:
    """A private RSA key for RS384 or P-384 EC key for ES384: joserfc key, PEM text/bytes or a PEM path."""
    cls = RSAKey if alg == "RS384" else ECKey
    try:
        if isinstance(key, Path):
            key = key.read_bytes()
        loaded = key if isinstance(key, (RSAKey, ECKey)) else cls.import_key(key)
    except (OSError, JoseError, ValueError, TypeError) as exc:
        raise InputError("epic_key is not a readable private key PEM", field="epic_key") from exc
    if not isinstance(loaded, cls) or not loaded.is_private:
        raise InputError(f"epic_key must be a private key matching {alg}", field="epic_key")
    loaded.ensure_kid()
    return loaded


class EpicAuth:
    """Keys, registered clients and issued tokens, under the simulator's lock."""

    def __init__(self, lock: threading.RLock, clock: Callable[[], float], *, alg: str,
                 token_ttl: int, key: Any = None) -> None:
        self._lock, self.clock, self.alg, self.token_ttl = lock, clock, alg, int(token_ttl)
        self.key = load_epic_key(key, alg) if key is not None else generate_key(alg)
        self._wrong_key: RSAKey | ECKey | None = None
        self.clients: dict[str, KeySet] = {}
        self.reset()

    def reset(self) -> None:
        """Forget issued tokens and seen assertions (keys and clients stay)."""
        with self._lock:
            self._tokens: dict[str, tuple[str, float]] = {}  # access token -> (client id, exp)
            self._assertion_jtis: dict[str, float] = {}  # client assertion jti -> exp

    @property
    def jwks(self) -> dict[str, Any]:
        """The public JWKS Epic publishes for its inbound JWTs."""
        jwk = self.key.as_dict(private=False)
        jwk.update({"use": "sig", "alg": self.alg})
        return {"keys": [jwk]}

    def register_client(self, client_id: str, key: Any) -> None:
        """Allow ``client_id`` at the token endpoint, its assertions verified with ``key`` (JWKS/JWK/PEM)."""
        if not isinstance(client_id, str) or not client_id:
            raise InputError("client_id must be a non-empty string", field="client_id")
        keyset = load_keyset(key, field_name="key")
        with self._lock:
            self.clients[client_id] = keyset

    def expire_tokens(self) -> int:
        """Expire every access token issued so far: the next outbound call with one gets 401."""
        with self._lock:
            for tok, (client, _exp) in list(self._tokens.items()):
                self._tokens[tok] = (client, 0.0)
            return len(self._tokens)

    def inbound_token(self, url: str, iss: str, ttl: int, mode: str = "valid") -> str:
        """A bearer JWT Epic signs for delivering to ``url``. ``mode`` builds bad ones for tests:
        valid | expired | wrong_aud | wrong_key | wrong_iss | too_long (exp > 5 min) | no_jti | alg_none."""
        now = int(self.clock())
        claims: dict[str, Any] = {"iss": iss, "sub": iss, "aud": url,
                                  "iat": now, "exp": now + ttl, "jti": str(uuid.uuid4())}
        key = self.key
        if mode == "expired":
            claims.update(iat=now - 600, exp=now - 300)
        elif mode == "wrong_aud":
            claims["aud"] = url + "-elsewhere"
        elif mode == "wrong_iss":
            claims["iss"] = claims["sub"] = "not-" + claims["iss"]
        elif mode == "too_long":
            claims["exp"] = now + 3600
        elif mode == "no_jti":
            claims.pop("jti")
        elif mode == "wrong_key":
            if self._wrong_key is None:
                self._wrong_key = generate_key(self.alg)
            key = self._wrong_key
        elif mode == "alg_none":
            header = base64.urlsafe_b64encode(b'{"alg":"none","typ":"JWT"}').rstrip(b"=").decode()
            payload = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
            return f"{header}.{payload}."
        elif mode != "valid":
            raise InputError("unknown token mode", field="token")
        # wrong_key keeps the real kid: the kid matches, the signature does not.
        header = {"alg": self.alg, "kid": self.key.kid, "typ": "JWT"}
        return jwt.encode(header, claims, key, algorithms=[self.alg])

    def token_endpoint(self, form: Any, token_url: str) -> Response:
        """SMART Backend Services: client_credentials with a private_key_jwt assertion."""
        def oauth_error(code: str, description: str, status: int = 400) -> _CallError:
            return _OAuthError(status, code, description)
        try:
            grant = form.get("grant_type")
            if not grant:
                raise oauth_error("invalid_request", "grant_type is required")
            if grant != "client_credentials":
                raise oauth_error("unsupported_grant_type", "grant_type must be client_credentials")
            if form.get("client_assertion_type") != ASSERTION_TYPE:
                raise oauth_error("invalid_request" if not form.get("client_assertion_type") else "invalid_client",
                                  f"client_assertion_type must be {ASSERTION_TYPE}")
            assertion = form.get("client_assertion")
            if not assertion:
                raise oauth_error("invalid_request", "client_assertion is required")
            client_id = self.verify_assertion(assertion, form.get("client_id"), token_url)
        except _OAuthError as err:
            return json_response({"error": err.code, "error_description": err.detail}, err.status)
        now = self.clock()
        token = secrets.token_urlsafe(32)
        with self._lock:
            if len(self._tokens) >= MAX_TOKENS:
                for tok in [t for t, (_c, exp) in self._tokens.items() if exp <= now][:MAX_TOKENS // 2] or \
                        list(self._tokens)[:MAX_TOKENS // 2]:
                    self._tokens.pop(tok, None)
            self._tokens[token] = (client_id, now + self.token_ttl)
        scope = form.get("scope") or "system/*.read"
        resp = json_response({"access_token": token, "token_type": "Bearer", "expires_in": self.token_ttl, "scope": scope})
        resp.headers["Cache-Control"] = "no-store"
        return resp

    def verify_assertion(self, assertion: str, form_client_id: str | None, token_url: str) -> str:
        def bad(description: str) -> _OAuthError:
            return _OAuthError(400, "invalid_client", description)
        parts = assertion.split(".")
        if len(parts) != 3:
            raise bad("client_assertion is not a compact JWS")
        try:
            header, unverified = b64url_json(parts[0]), b64url_json(parts[1])
        except (ValueError, UnicodeDecodeError):
            raise bad("client_assertion is not a readable JWT") from None
        alg = header.get("alg")
        if alg not in SIGNING_ALGS:
            raise bad("client_assertion must be signed with RS384 or ES384")
        client_id = unverified.get("iss")
        with self._lock:
            keyset = self.clients.get(client_id) if isinstance(client_id, str) else None
        if keyset is None:
            raise bad("client_assertion iss is not a registered client")
        key: Any = keyset
        if "kid" not in header and len(keyset.keys) == 1:
            key = keyset.keys[0]
        try:
            claims = jwt.decode(assertion, key, algorithms=[alg]).claims
        except (JoseError, ValueError, TypeError):
            raise bad("client_assertion signature does not verify with the registered key") from None
        if claims.get("sub") != client_id:
            raise bad("client_assertion sub must equal iss (the client id)")
        if form_client_id is not None and form_client_id != client_id:
            raise bad("client_id does not match the client_assertion")
        if claims.get("aud") != token_url and not (isinstance(claims.get("aud"), list)
                                                        and token_url in claims["aud"]):
            raise bad("client_assertion aud must be the token endpoint URL")
        now = self.clock()
        exp = claims.get("exp")
        if not isinstance(exp, (int, float)) or isinstance(exp, bool):
            raise bad("client_assertion exp is required")
        if exp <= now - CLOCK_SKEW_S:
            raise bad("client_assertion has expired")
        if exp > now + MAX_ASSERTION_LIFETIME_S + CLOCK_SKEW_S:
            raise bad("client_assertion exp must be at most 5 minutes in the future")
        jti = claims.get("jti")
        if not isinstance(jti, str) or not jti:
            raise bad("client_assertion jti is required")
        with self._lock:
            for old, old_exp in list(self._assertion_jtis.items()):
                if old_exp < now - CLOCK_SKEW_S:
                    del self._assertion_jtis[old]
            key_jti = f"{client_id}\x00{jti}"
            if key_jti in self._assertion_jtis:
                raise bad("client_assertion jti was already used")
            self._assertion_jtis[key_jti] = float(exp)
        return client_id

    def authorize(self, auth: str) -> None:
        """Accept the Authorization header of an outbound call, or raise Epic's 401."""
        scheme, _, token = auth.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise _CallError(401, "Unauthorized", "a bearer token from the token endpoint is required")
        with self._lock:
            entry = self._tokens.get(token.strip())
        if entry is None:
            raise _CallError(401, "Unauthorized", "the bearer token is not one this server issued")
        if entry[1] <= self.clock():
            raise _CallError(401, "TokenExpired", "the bearer token has expired")
