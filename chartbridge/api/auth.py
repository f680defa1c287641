"""Who is calling the capture API.

Every request of the API is answered for one `Principal`, found by the authenticators in
`AUTHENTICATORS`, tried in order until one returns a Principal (None: "not mine, try the
next"; raising ApiUnauthorized/ApiForbidden: "mine, and refused"). The first is the bearer
token this API's own token endpoint issued (OAuth 2.0 client credentials, see token.py);
other surfaces (the SMART recorder's page session) append theirs with
`register_authenticator`.

Approval is a person's act. A Principal from a page session carries the signed-in person
(`person`); a client token does not, so the approval route also needs the clinician's own
ID token from the org's identity provider in the `X-Clinician-Token` header (see
`clinician_from_token`). The approver recorded is that person, never the client.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import flask

from chartbridge.core.errors import ChartbridgeError
from chartbridge.core.models import Identifier

SCOPES = ("capture", "read", "approve")
CLINICIAN_HEADER = "X-Clinician-Token"


class ApiUnauthorized(ChartbridgeError):
    code = "unauthorized"
    http_status = 401


class ApiForbidden(ChartbridgeError):
    code = "forbidden"
    http_status = 403


@dataclass(frozen=True)
class Principal:
    org: str
    scopes: frozenset[str]
    client_id: str | None
    person: Identifier | None
    person_name: str | None
    via: str                                    # "client" | "page"


Authenticator = Callable[[flask.Request, str], "Principal | None"]
AUTHENTICATORS: list[Authenticator] = []


def register_authenticator(fn: Authenticator) -> Authenticator:
    """Add an authenticator after those already registered (the bearer token is first).
    Registering the same function twice is a no-op; usable as a decorator."""
    if fn not in AUTHENTICATORS:
        AUTHENTICATORS.append(fn)
    return fn


def authenticate(request: flask.Request, org: str) -> Principal:
    for fn in list(AUTHENTICATORS):
        principal = fn(request, org)
        if principal is not None:
            if principal.org != org:
                raise ApiForbidden("the credentials are for another organization")
            return principal
    raise ApiUnauthorized("a bearer token from this organization's token endpoint is needed")


def require(principal: Principal, scope: str) -> None:
    if scope not in principal.scopes:
        raise ApiForbidden(f"the token lacks the {scope} scope", scope=scope)


# -- the clinician behind an approval ------------------------------------------------------
_JWKS: dict[str, tuple[float, dict]] = {}
_JWKS_TTL_S = 300
ALGORITHMS = ["RS256", "RS384", "RS512", "ES256", "ES384", "PS256"]


def clinician(engine, org: str, principal: Principal, request: flask.Request
              ) -> tuple[Identifier, str | None, str]:
    """(the person, their name, their role) who decides. A page session names its
    signed-in person; a client's request carries the clinician's own ID token from the
    org's identity provider (`sign_in.oidc`) in X-Clinician-Token, checked against the
    provider's JWKS (signature, iss, aud = the org's client id there, exp, iat, sub)."""
    if principal.person is not None:
        return principal.person, principal.person_name, "clinician"
    token = request.headers.get(CLINICIAN_HEADER, "").strip()
    if not token:
        raise ApiUnauthorized(f"an approval is a clinician's act: send their ID token from "
                              f"the organization's identity provider in {CLINICIAN_HEADER}",
                              field=CLINICIAN_HEADER)
    if len(token) > 8192:
        raise ApiUnauthorized("the clinician token is too large", field=CLINICIAN_HEADER)
    claims = _verify_id_token(engine, org, token)
    person = Identifier(value=str(claims["sub"])[:128], type="USER",
                        system=str(claims["iss"]).rstrip("/"))
    provider = _provider(engine, org)
    role = claims.get(provider.role_claim)
    name = claims.get("name")
    return (person, str(name)[:100] if name else None,
            str(role)[:64] if role else "clinician")


def _provider(engine, org: str):
    from chartbridge.review.oidc import provider_for

    provider = provider_for(org, engine.org(org))
    if provider is None:
        raise ApiForbidden("this organization has no identity provider (sign_in.oidc), so "
                           "no clinician can approve through the API", field=CLINICIAN_HEADER)
    return provider


def _verify_id_token(engine, org: str, token: str) -> dict:
    import time

    import httpx
    from joserfc import jwt
    from joserfc.errors import JoseError
    from joserfc.jwk import KeySet

    from chartbridge.review.oidc import SignInRefused, _discover

    provider = _provider(engine, org)
    try:
        doc = _discover(engine, provider)
    except SignInRefused:
        raise ApiUnauthorized("the organization's identity provider cannot be read",
                              field=CLINICIAN_HEADER) from None

    def keys(fresh: bool) -> KeySet:
        hit = _JWKS.get(doc["jwks_uri"])
        if fresh or hit is None or time.monotonic() - hit[0] > _JWKS_TTL_S:
            with engine.services.http(timeout=10.0) as http:
                hit = (time.monotonic(), http.get(doc["jwks_uri"]).json())
            _JWKS[doc["jwks_uri"]] = hit
        return KeySet.import_key_set(hit[1])

    refused = ApiUnauthorized("the clinician token is not a valid ID token of the "
                              "organization's identity provider", field=CLINICIAN_HEADER)
    try:
        try:
            claims = jwt.decode(token, keys(False), algorithms=ALGORITHMS).claims
        except JoseError:
            claims = jwt.decode(token, keys(True), algorithms=ALGORITHMS).claims   # rotated
    except (JoseError, ValueError, TypeError, KeyError, httpx.HTTPError):
        raise refused from None
    now = time.time()
    aud = claims.get("aud")
    auds = aud if isinstance(aud, list) else [aud]
    ok = (str(claims.get("iss", "")).rstrip("/") == provider.issuer
          and provider.client_id in auds
          and (len(auds) == 1 or claims.get("azp") == provider.client_id)
          and isinstance(claims.get("exp"), (int, float)) and claims["exp"] > now - 30
          and isinstance(claims.get("iat"), (int, float)) and claims["iat"] < now + 300
          and isinstance(claims.get("sub"), str) and claims["sub"])
    if not ok:
        raise refused
    return claims
