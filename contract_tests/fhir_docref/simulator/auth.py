"""SMART Backend Services for the simulator: the client registry, the token endpoint
(client_credentials + a private_key_jwt assertion, checked by hand with `cryptography`:
RS384 / ES384, iss = sub = client_id, aud = the token URL, exp at most five minutes ahead,
jti never twice, kid of a registered key) and bearer-token checks on FHIR calls. How the
`scope` parameter is treated is the profile's (rules.ServerRules.scope_param)."""
from __future__ import annotations

import base64
import json
import re
import secrets
import threading
from collections import OrderedDict, deque
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from chartbridge.core.errors import InputError

from .answers import fail
from .rules import ServerRules

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
ASSERTION_MAX_LIFETIME_S = 300  # SMART Backend Services: exp no more than five minutes ahead
SUPPORTED_ALGS = ("RS384", "ES384")
SCOPE_RE = re.compile(r"^(system|user|patient)/([A-Za-z]+|\*)\.([a-z]+|\*)(\?.*)?$")
V1_SCOPE_RE = re.compile(r"^(system|user|patient)/([A-Za-z]+|\*)\.(read|write|\*)$")
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


# ---------------------------------------------------------------- JOSE by hand (RS384 / ES384)
def _b64url_decode(part: str) -> bytes:
    if not isinstance(part, str) or not re.fullmatch(r"[A-Za-z0-9_\-]*", part):
        raise ValueError("not base64url")
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


def _b64url_uint(value: Any) -> int:
    return int.from_bytes(_b64url_decode(value), "big")


def public_key_from_jwk(jwk: Mapping[str, Any]) -> Any:
    """An RSA or EC P-384 public key from a JWK (the private members are ignored)."""
    kty = jwk.get("kty")
    try:
        if kty == "RSA":
            return rsa.RSAPublicNumbers(_b64url_uint(jwk["e"]), _b64url_uint(jwk["n"])).public_key()
        if kty == "EC":
            if jwk.get("crv") != "P-384":
                raise InputError("only EC keys on curve P-384 (ES384) are accepted", field="crv")
            return ec.EllipticCurvePublicNumbers(_b64url_uint(jwk["x"]), _b64url_uint(jwk["y"]),
                                                 ec.SECP384R1()).public_key()
    except (KeyError, ValueError) as exc:
        raise InputError("JWK is missing or has a malformed key member", field="jwk") from exc
    raise InputError("JWK kty must be RSA or EC", field="kty")


def verify_signature(key: Any, alg: str, signing_input: bytes, signature: bytes) -> bool:
    try:
        if alg == "RS384" and isinstance(key, rsa.RSAPublicKey):
            key.verify(signature, signing_input, padding.PKCS1v15(), hashes.SHA384())
            return True
        if alg == "ES384" and isinstance(key, ec.EllipticCurvePublicKey):
            if len(signature) != 96:
                return False
            der = encode_dss_signature(int.from_bytes(signature[:48], "big"),
                                       int.from_bytes(signature[48:], "big"))
            key.verify(der, signing_input, ec.ECDSA(hashes.SHA384()))
            return True
    except InvalidSignature:
        return False
    return False


@dataclass
class Client:
    client_id: str
    keys: dict[str, Any]           # kid -> public key
    scopes: tuple[str, ...]


@dataclass
class Token:
    client_id: str
    scopes: frozenset[str]
    expires_at: float
    revoked: bool = False


def scope_allows(scopes: Iterable[str], rtype: str, need: str) -> bool:
    """SMART v1 (read/write/*) and v2 (cruds) system scopes. `need` is one of c r u d s."""
    for scope in scopes:
        m = SCOPE_RE.match(scope)
        if not m or m.group(1) != "system" or m.group(2) not in ("*", rtype):
            continue
        perm = m.group(3)
        if perm == "*" or (perm == "read" and need in "rs") or (perm == "write" and need in "cud"):
            return True
        if re.fullmatch(r"c?r?u?d?s?", perm) and need in perm:
            return True
    return False


class TokenService:
    """Registered clients, issued tokens and used jtis; all under the simulator's lock."""

    def __init__(self, rules: ServerRules, *, lock: threading.RLock, clock: Callable[[], float],
                 token_ttl_s: int, max_jti: int, max_log: int,
                 count: Callable[[str], None]) -> None:
        self.rules, self._lock, self.clock, self.token_ttl_s = rules, lock, clock, token_ttl_s
        self.max_jti, self._count = max_jti, count
        self.clients: dict[str, Client] = {}
        self.tokens: dict[str, Token] = {}
        self.jti: OrderedDict[str, float] = OrderedDict()
        self.log: deque[dict[str, Any]] = deque(maxlen=max_log)

    def reset(self, keep_clients: bool) -> None:
        with self._lock:
            if not keep_clients:
                self.clients = {}
            self.tokens.clear()
            self.jti.clear()
            self.log.clear()

    def live(self) -> int:
        with self._lock:
            return sum(1 for t in self.tokens.values()
                       if not t.revoked and t.expires_at > self.clock())

    def register_client(self, client_id: str, keys: Any, scopes: Iterable[str] | str = (),
                        kid: str | None = None) -> None:
        """Register a backend-services client: `keys` is one JWK, a list of JWKs, a JWKS
        ({"keys": [...]}) or a cryptography public key (then `kid` is required)."""
        if not isinstance(client_id, str) or not client_id:
            raise InputError("client_id is required", field="client_id")
        if isinstance(scopes, str):
            scopes = scopes.split()
        scopes = tuple(scopes)
        bad = [s for s in scopes if not SCOPE_RE.match(s)]
        if bad:
            raise InputError("scopes must look like system/Type.perm", field="scopes")
        found: dict[str, Any] = {}
        if isinstance(keys, Mapping) and "keys" in keys:
            keys = keys["keys"]
        if isinstance(keys, Mapping):
            keys = [keys]
        if isinstance(keys, (rsa.RSAPublicKey, ec.EllipticCurvePublicKey)):
            if not kid:
                raise InputError("kid is required with a bare public key", field="kid")
            found[kid] = keys
        elif isinstance(keys, list):
            for jwk in keys:
                if not isinstance(jwk, Mapping) or not jwk.get("kid"):
                    raise InputError("every JWK needs a kid", field="kid")
                found[str(jwk["kid"])] = public_key_from_jwk(jwk)
        if not found:
            raise InputError("at least one public key is required", field="keys")
        with self._lock:
            self.clients[client_id] = Client(client_id, found, scopes)

    def expire_tokens(self) -> int:
        """Expire every access token issued so far; the next FHIR call with one gets 401."""
        with self._lock:
            for token in self.tokens.values():
                token.revoked = True
            return len(self.tokens)

    def issue(self, method: str, mimetype: str, form: Mapping[str, str], token_url: str
              ) -> tuple[int, dict[str, Any], dict[str, str]]:
        """The token endpoint: (status, JSON body, headers) for one request."""
        with self._lock:
            self._count("token_requests")
        entry: dict[str, Any] = {"at": self.clock(), "client_id": None, "scope_param": None,
                                 "granted": None, "status": None, "error": None}

        def refuse(error: str, description: str, status: int = 400
                   ) -> tuple[int, dict[str, Any], dict[str, str]]:
            entry.update(status=status, error=error)
            with self._lock:
                self.log.append(entry)
            return status, {"error": error, "error_description": description}, dict(NO_STORE)

        if method != "POST":
            return refuse("invalid_request", "use POST", 405)
        if mimetype != "application/x-www-form-urlencoded":
            return refuse("invalid_request", "body must be application/x-www-form-urlencoded")
        entry["scope_param"] = form.get("scope")
        if form.get("grant_type") != "client_credentials":
            return refuse("unsupported_grant_type", "grant_type must be client_credentials")
        if form.get("client_assertion_type") != ASSERTION_TYPE:
            return refuse("invalid_request", "client_assertion_type must be " + ASSERTION_TYPE)
        assertion = form.get("client_assertion")
        if not assertion:
            return refuse("invalid_request", "client_assertion is required")
        if self.rules.scope_param == "required" and not form.get("scope"):
            return refuse("invalid_request", "scope is required")
        # parse the JWT
        pieces = assertion.split(".")
        if len(pieces) != 3:
            return refuse("invalid_client", "client_assertion is not a compact JWS")
        try:
            header = json.loads(_b64url_decode(pieces[0]))
            claims = json.loads(_b64url_decode(pieces[1]))
            signature = _b64url_decode(pieces[2])
        except (ValueError, UnicodeDecodeError):
            return refuse("invalid_client", "client_assertion is not valid base64url JSON")
        if not isinstance(header, dict) or not isinstance(claims, dict):
            return refuse("invalid_client", "client_assertion header and claims must be objects")
        alg = header.get("alg")
        if alg not in SUPPORTED_ALGS:
            return refuse("invalid_client", "alg must be RS384 or ES384")
        if header.get("typ") not in (None, "JWT"):
            return refuse("invalid_client", "typ must be JWT")
        kid = header.get("kid")
        if not kid:
            return refuse("invalid_client", "kid header is required")
        iss, sub = claims.get("iss"), claims.get("sub")
        entry["client_id"] = iss if isinstance(iss, str) else None
        with self._lock:
            client = self.clients.get(iss) if isinstance(iss, str) else None
        if client is None:
            return refuse("invalid_client", "iss is not a registered client_id")
        if sub != iss:
            return refuse("invalid_client", "sub must equal iss (the client_id)")
        if claims.get("aud") != token_url:
            return refuse("invalid_client", "aud must be the token endpoint URL")
        exp = claims.get("exp")
        now = self.clock()
        if not isinstance(exp, (int, float)) or isinstance(exp, bool):
            return refuse("invalid_client", "exp is required (seconds since epoch)")
        if exp <= now:
            return refuse("invalid_client", "client_assertion has expired")
        if exp > now + ASSERTION_MAX_LIFETIME_S:
            return refuse("invalid_client", "exp must be no more than five minutes in the future")
        jti = claims.get("jti")
        if not isinstance(jti, str) or not jti:
            return refuse("invalid_client", "jti is required")
        key = client.keys.get(str(kid))
        if key is None:
            return refuse("invalid_client", "kid does not match a key registered for this client")
        if not verify_signature(key, alg, f"{pieces[0]}.{pieces[1]}".encode("ascii"), signature):
            return refuse("invalid_client", "signature does not verify with the registered key")
        with self._lock:
            replay_key = f"{iss}\x00{jti}"
            if replay_key in self.jti:
                return refuse("invalid_client", "jti has already been used")
            self.jti[replay_key] = now
            while len(self.jti) > self.max_jti:
                self.jti.popitem(last=False)
            if self.rules.scope_param == "ignored":
                granted = list(client.scopes)  # the scope param is ignored; registration rules
            else:
                requested = form.get("scope", "").split()
                granted = [s for s in requested if s in client.scopes
                           and (not self.rules.scope_v1_only or V1_SCOPE_RE.match(s))]
                if not granted:
                    return refuse("invalid_scope", "none of the requested scopes is granted")
            access = secrets.token_urlsafe(32)
            self.tokens = {k: t for k, t in self.tokens.items()
                           if t.expires_at > now and not t.revoked}
            if len(self.tokens) >= 10_000:
                return refuse("temporarily_unavailable", "too many live tokens", 503)
            self.tokens[access] = Token(iss, frozenset(granted), now + self.token_ttl_s)
            self._count("tokens_issued")
            entry.update(status=200, granted=" ".join(granted))
            self.log.append(entry)
        return 200, {"access_token": access, "token_type": "bearer",
                     "expires_in": self.token_ttl_s, "scope": " ".join(granted)}, dict(NO_STORE)

    def authenticate(self, header: str) -> Token:
        """The live token of an `Authorization: Bearer` header, else a 401 answer."""
        challenge = {"WWW-Authenticate": 'Bearer realm="fhir"'}
        if not header.lower().startswith("bearer "):
            raise fail(401, "login", "bearer access token required", None, challenge)
        with self._lock:
            token = self.tokens.get(header[7:].strip())
            if token is None:
                raise fail(401, "login", "unknown access token", None,
                           {"WWW-Authenticate": 'Bearer error="invalid_token"'})
            if token.revoked or token.expires_at <= self.clock():
                raise fail(401, "expired", "access token expired", None,
                           {"WWW-Authenticate": 'Bearer error="invalid_token", '
                                                'error_description="expired"'})
            return token

    @staticmethod
    def need(token: Token | None, rtype: str, perm: str) -> None:
        if token is not None and not scope_allows(token.scopes, rtype, perm):
            raise fail(403, "forbidden", f"access token lacks a system scope for {rtype} ({perm})")
