"""Who the clinician is: the org's identity provider, by OpenID Connect (authorization code
with PKCE S256, `state` and `nonce`; authlib as the client, the ID token verified with
joserfc against the provider's JWKS: signature, `iss`, `aud`/`azp`, `exp`, `iat`, `nonce`).

The provider is the org file's `sign_in.oidc` block (issuer, client_id, an optional
client_secret reference, role_claim). For orgs configured before that block existed, the
older environment variables still work when the file has none (ORG is the org id
upper-cased with '-' as '_'):

    CHARTBRIDGE_OIDC_<ORG>_ISSUER          the provider's issuer URL (discovery base)
    CHARTBRIDGE_OIDC_<ORG>_CLIENT_ID       our client id at the provider
    CHARTBRIDGE_OIDC_<ORG>_CLIENT_SECRET   optional: an env:NAME or file:PATH reference
    CHARTBRIDGE_OIDC_<ORG>_ROLE_CLAIM      optional: the claim holding the clinical role
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass

import httpx

from chartbridge.core.errors import ChartbridgeError, ConfigError, InputError


class SignInRefused(ChartbridgeError):
    code = "sign_in_refused"
    http_status = 403


@dataclass(frozen=True)
class Provider:
    org: str
    issuer: str
    client_id: str
    client_secret_ref: object | None          # a SecretRef, or an env:/file: string
    role_claim: str


def _env_name(org: str, what: str) -> str:
    return f"CHARTBRIDGE_OIDC_{org.upper().replace('-', '_')}_{what}"


def provider_for(org: str, config=None) -> Provider | None:
    """The org's provider: its file's `sign_in.oidc` (`config`, the OrgConfig), else the
    older environment variables, else None (no sign-in configured)."""
    oidc = getattr(getattr(config, "sign_in", None), "oidc", None)
    if oidc is not None:
        # the SecretRef itself: a relative file: path resolves against the org file's folder
        return Provider(org, oidc.issuer.rstrip("/"), oidc.client_id, oidc.client_secret,
                        oidc.role_claim)
    issuer = os.environ.get(_env_name(org, "ISSUER"))
    if not issuer:
        return None
    client_id = os.environ.get(_env_name(org, "CLIENT_ID"))
    if not client_id:
        raise ConfigError("an OIDC issuer is set without a client id",
                          key=_env_name(org, "CLIENT_ID"))
    return Provider(org, issuer.rstrip("/"), client_id,
                    os.environ.get(_env_name(org, "CLIENT_SECRET")) or None,
                    os.environ.get(_env_name(org, "ROLE_CLAIM")) or "role")


_DISCOVERED: dict[str, tuple[float, dict]] = {}
DISCOVERY_TTL_S = 300        # an anonymous sign-in GET reuses the provider's configuration


def _discover(engine, provider: Provider) -> dict:
    hit = _DISCOVERED.get(provider.issuer)
    if hit is not None and time.monotonic() - hit[0] < DISCOVERY_TTL_S:
        return hit[1]
    doc = _fetch_configuration(engine, provider)
    _DISCOVERED[provider.issuer] = (time.monotonic(), doc)
    return doc


def _fetch_configuration(engine, provider: Provider) -> dict:
    try:
        with engine.services.http(timeout=10.0) as http:
            resp = http.get(provider.issuer + "/.well-known/openid-configuration")
        doc = resp.json() if resp.status_code == 200 else None
    except (httpx.HTTPError, ValueError):
        doc = None
    if not isinstance(doc, dict) or doc.get("issuer", "").rstrip("/") != provider.issuer:
        raise SignInRefused("the organization's identity provider could not be read")
    for name in ("authorization_endpoint", "token_endpoint", "jwks_uri"):
        if not isinstance(doc.get(name), str):
            raise SignInRefused(f"the identity provider's configuration has no {name}")
    return doc


def _client(provider: Provider, redirect_uri: str):
    from authlib.integrations.httpx_client import OAuth2Client

    secret = None
    if provider.client_secret_ref:
        from chartbridge.config.secrets import resolve
        secret = resolve(provider.client_secret_ref)
    return OAuth2Client(client_id=provider.client_id, client_secret=secret,
                        scope="openid profile", redirect_uri=redirect_uri,
                        code_challenge_method="S256", timeout=10.0,
                        token_endpoint_auth_method="client_secret_basic" if secret else "none")


def start(engine, provider: Provider, redirect_uri: str) -> tuple[str, dict]:
    """The provider's authorization URL and what the callback must check."""
    from authlib.common.security import generate_token

    doc = _discover(engine, provider)
    verifier, nonce = generate_token(64), generate_token(32)
    with _client(provider, redirect_uri) as client:
        url, state = client.create_authorization_url(doc["authorization_endpoint"],
                                                     code_verifier=verifier, nonce=nonce)
    return url, {"state": state, "verifier": verifier, "nonce": nonce,
                 "started": time.time()}


def finish(engine, provider: Provider, pending: dict, args, redirect_uri: str) -> dict:
    """Exchange the code, verify the ID token, and return the signed-in user."""
    import secrets

    from authlib.integrations.base_client.errors import OAuthError
    from joserfc import jwt
    from joserfc.errors import JoseError
    from joserfc.jwk import KeySet

    if not secrets.compare_digest(args.get("state", ""), pending.get("state", "")):
        raise InputError("the sign-in answer does not belong to this sign-in", field="state")
    if time.time() - pending.get("started", 0) > 600:
        raise InputError("the sign-in took too long; sign in again", field="state")
    if args.get("error"):
        raise SignInRefused("the identity provider did not sign you in")
    doc = _discover(engine, provider)
    try:
        with _client(provider, redirect_uri) as client:
            token = client.fetch_token(doc["token_endpoint"], code=args.get("code", ""),
                                       code_verifier=pending["verifier"],
                                       grant_type="authorization_code")
        with engine.services.http(timeout=10.0) as http:
            keys = KeySet.import_key_set(http.get(doc["jwks_uri"]).json())
    except (OAuthError, httpx.HTTPError, ValueError, JoseError):
        raise SignInRefused("the identity provider did not complete the sign-in") from None
    id_token = token.get("id_token")
    if not id_token:
        raise SignInRefused("the identity provider sent no ID token")
    try:
        claims = jwt.decode(id_token, keys,
                            algorithms=["RS256", "RS384", "ES256", "ES384", "PS256"]).claims
    except (JoseError, ValueError):
        raise SignInRefused("the ID token's signature does not verify") from None
    now = time.time()
    aud = claims.get("aud")
    auds = aud if isinstance(aud, list) else [aud]
    checks = [
        (str(claims.get("iss", "")).rstrip("/") == provider.issuer, "iss"),
        (provider.client_id in auds, "aud"),
        (len(auds) == 1 or claims.get("azp") == provider.client_id, "azp"),
        (isinstance(claims.get("exp"), (int, float)) and claims["exp"] > now - 30, "exp"),
        (isinstance(claims.get("iat"), (int, float)) and claims["iat"] < now + 300, "iat"),
        (secrets.compare_digest(str(claims.get("nonce", "")), pending.get("nonce", "")), "nonce"),
        (isinstance(claims.get("sub"), str) and claims["sub"], "sub"),
    ]
    for ok, name in checks:
        if not ok:
            raise SignInRefused(f"the ID token's {name} is not valid for this sign-in")
    role = claims.get(provider.role_claim)
    return {"id": claims["sub"], "name": str(claims.get("name") or claims["sub"])[:100],
            "role": str(role)[:64] if role else "clinician", "issuer": provider.issuer}
