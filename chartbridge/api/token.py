"""POST /orgs/{org}/api/v1/token: OAuth 2.0 client credentials (RFC 6749 4.4) with a
private_key_jwt client assertion (RFC 7523), on authlib's authorization server.

Clients and their public keys are the org file's `api.clients` (JWKS by file or https URL).
The assertion's `aud` is this endpoint's public URL, its `jti` is single-use (the ledger's
replay guard). The token is opaque: its SHA-256 is kept, sealed, in `access_tokens` with
the client and scopes, for `api.token_ttl_s` seconds (short-lived, one org).
"""
from __future__ import annotations

import hashlib
import json
import time
from datetime import datetime, timedelta, timezone

import flask
import httpx
from authlib.integrations.flask_oauth2 import AuthorizationServer
from authlib.oauth2.rfc6749 import ClientMixin, grants
from authlib.oauth2.rfc6750 import BearerTokenGenerator
from authlib.oauth2.rfc7523 import JWTBearerClientAssertion
from authlib.common.security import generate_token

from chartbridge import httperrors
from chartbridge.ledger.tokens import DbTokenCache

from .auth import SCOPES, ApiUnauthorized, Principal

AUTH_METHOD = "private_key_jwt"
_JWKS_TTL_S = 300
_jwks_cache: dict[str, tuple[float, dict]] = {}


def token_key(token: str) -> str:
    return "api-token:" + hashlib.sha256(token.encode()).hexdigest()


class Client(ClientMixin):
    def __init__(self, spec) -> None:
        self.spec = spec
        self.client_id = spec.client_id

    def get_client_id(self):
        return self.client_id

    def get_allowed_scope(self, scope):
        allowed = list(self.spec.scopes)
        if not scope:
            return " ".join(allowed)
        return " ".join(s for s in scope.split() if s in allowed)

    def check_endpoint_auth_method(self, method, endpoint):
        return method == AUTH_METHOD and endpoint == "token"

    def check_grant_type(self, grant_type):
        return grant_type == "client_credentials"


class Grant(grants.ClientCredentialsGrant):
    TOKEN_ENDPOINT_AUTH_METHODS = [AUTH_METHOD]

    def validate_token_request(self):
        super().validate_token_request()
        from authlib.oauth2.rfc6749 import InvalidScopeError

        asked = set((self.request.payload.scope or "").split())
        if not asked <= set(self.client.spec.scopes):      # never a silently smaller token
            raise InvalidScopeError(description="the client may not have scope "
                                    + " ".join(sorted(asked - set(self.client.spec.scopes))))


class Assertion(JWTBearerClientAssertion):
    CLIENT_AUTH_METHOD = AUTH_METHOD

    def __init__(self, engine, org: str, audience: str) -> None:
        super().__init__(leeway=30)
        self.engine, self.org, self.audience = engine, org, audience

    def get_audiences(self):
        return [self.audience]

    def validate_jti(self, claims, jti):
        exp = claims.get("exp")
        if not isinstance(jti, str) or not 0 < len(jti) <= 150 or not isinstance(exp, (int, float)):
            return False
        if exp - time.time() > 300:           # short-lived assertions only
            return False
        until = datetime.fromtimestamp(exp, timezone.utc) + timedelta(seconds=60)
        return self.engine.services.replay_guard.first_use(
            self.org, f"api-client:{claims.get('sub')}:{jti}", until)

    def resolve_client_public_key(self, client):
        from joserfc.jwk import KeySet
        return KeySet.import_key_set(load_jwks(self.engine, client.spec.jwks))


def load_jwks(engine, ref) -> dict:
    """The client's public keys: a file (re-read when it changes) or an https URL (cached
    5 minutes). Any failure is the client's credentials being unverifiable: 401."""
    from pathlib import Path
    from authlib.oauth2.rfc6749 import InvalidClientError

    try:
        if isinstance(ref, Path):
            return json.loads(ref.read_text(encoding="utf-8"))
        hit = _jwks_cache.get(ref)
        if hit and time.monotonic() - hit[0] < _JWKS_TTL_S:
            return hit[1]
        with engine.services.http(timeout=10.0) as http:
            doc = http.get(ref).json()
        _jwks_cache[ref] = (time.monotonic(), doc)
        return doc
    except (OSError, ValueError, httpx.HTTPError):
        raise InvalidClientError(description="the client's JWKS cannot be read") from None


def _cache(engine) -> DbTokenCache:
    cache = getattr(engine, "_api_token_cache", None)
    if cache is None:
        cache = DbTokenCache(engine.db, engine.clock, margin_seconds=0)
        engine._api_token_cache = cache
    return cache


def token_response(engine, org: str):
    config = engine.org(org)
    ttl = config.api.token_ttl_s
    audience = httperrors.public_url(flask.request.path)

    def query_client(client_id):
        spec = config.api.client(client_id)
        return Client(spec) if spec is not None else None

    def save_token(token, request):
        expires = engine.clock.now() + timedelta(seconds=ttl)
        _cache(engine).put(org, token_key(token["access_token"]), json.dumps(
            {"client_id": request.client.client_id, "scope": token.get("scope", "")}), expires)

    server = AuthorizationServer(query_client=query_client, save_token=save_token)
    server.scopes_supported = list(SCOPES)
    server.register_token_generator("default", BearerTokenGenerator(
        lambda *a, **k: generate_token(48), expires_generator=lambda client, grant_type: ttl))
    server.register_client_auth_method(AUTH_METHOD, Assertion(engine, org, audience))
    server.register_grant(Grant)
    resp = server.create_token_response()
    resp.headers["Cache-Control"] = "no-store"
    if resp.status_code == 400 and (resp.get_json(silent=True) or {}).get("error") == "invalid_client":
        resp.status_code = 401                        # RFC 6749 5.2: the client did not verify
        resp.headers["WWW-Authenticate"] = 'Bearer error="invalid_client"'
    return resp


def bearer_authenticator(request: flask.Request, org: str) -> Principal | None:
    """Tokens from this API's token endpoint. No Authorization header: not ours."""
    header = request.headers.get("Authorization", "")
    if not header:
        return None
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip() or len(token) > 512:
        raise ApiUnauthorized("the Authorization header must be 'Bearer <token>'",
                              field="Authorization")
    engine = flask.current_app.extensions["chartbridge"]
    found = _cache(engine).get(org, token_key(token.strip()))
    if found is None:
        raise ApiUnauthorized("the bearer token is unknown, expired or for another "
                              "organization", field="Authorization")
    data = json.loads(found)
    # the client may have been removed from the org file (or lost scopes) since the token
    # was issued: the token is worth only what the org file grants now
    spec = engine.org(org).api.client(data["client_id"])
    if spec is None:
        raise ApiUnauthorized("the bearer token's client is no longer registered with this "
                              "organization", field="Authorization")
    scopes = frozenset(data["scope"].split()) & frozenset(spec.scopes)
    return Principal(org=org, scopes=scopes, client_id=data["client_id"], person=None,
                     person_name=None, via="client")
