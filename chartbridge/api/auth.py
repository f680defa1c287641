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

import base64
import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass

import flask

from chartbridge.core.errors import ChartbridgeError, TransientError
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
    """The first authenticator's Principal. One whose Principal is for another org than the
    URL's (a registered surface whose session belongs elsewhere) is refused, 403: a
    credential answers for its own org only, whatever the authenticator."""
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
# A clinician's ID token proves who decides only when it is fresh and for this org:
MAX_TOKEN_AGE_S = 300        # iat at most 5 minutes old: sign in again for each approval
CLOCK_SKEW_S = 30            # leeway on exp and on an iat in the future
# The provider's keys are cached; a token with a kid not in the cache refetches them (key
# rotation), at most once per REFETCH_MIN_S per JWKS, so forged tokens cannot make every
# request fetch the provider's JWKS. A token that fails with a known kid never refetches.
_JWKS: dict[str, tuple[float, dict]] = {}
_JWKS_TTL_S = 300
REFETCH_MIN_S = 30
ALGORITHMS = ["RS256", "RS384", "RS512", "ES256", "ES384", "PS256"]
ORG_ROLE = re.compile(r"^(?P<role>[^\s,:]{1,64}):(?P<org>[a-z0-9][a-z0-9-]{0,62})$")


class IdentityProviderUnavailable(TransientError):
    """The org's identity provider (discovery or JWKS) cannot be read: an outage, 503 with
    Retry-After, never stored under an Idempotency-Key."""

    code = "identity_provider_unavailable"

    def __init__(self, message: str) -> None:
        super().__init__(message, maybe_delivered=False, field=CLINICIAN_HEADER)


def clinician(engine, org: str, principal: Principal, request: flask.Request
              ) -> tuple[Identifier, str | None, str]:
    """(the person, their name, their role) who decides. A page session names its
    signed-in person; a client's request carries the clinician's own ID token from the
    org's identity provider (`sign_in.oidc`) in X-Clinician-Token, checked against the
    provider's JWKS (signature, iss, aud = the org's client id there, azp, exp, sub) and
    fresh (iat at most MAX_TOKEN_AGE_S old).

    The token must be for this org. When no other org of this engine signs in with the
    same provider and client id, its audience says so. When several do (one provider and
    client for a group of clinics), the audience cannot tell them apart, so the role claim
    (`sign_in.oidc.role_claim`) must name the org, `<role>:<org>` — the operator console's
    rule (chartbridge/ops/access.py); a token naming only other orgs is 403. The role
    recorded is the part before the org."""
    if principal.person is not None:
        return principal.person, principal.person_name, "clinician"
    token = request.headers.get(CLINICIAN_HEADER, "").strip()
    if not token:
        raise ApiUnauthorized(f"an approval is a clinician's act: send their ID token from "
                              f"the organization's identity provider in {CLINICIAN_HEADER}",
                              field=CLINICIAN_HEADER)
    if len(token) > 8192:
        raise ApiUnauthorized("the clinician token is too large", field=CLINICIAN_HEADER)
    provider = _provider(engine, org)
    claims = _verify_id_token(engine, provider, token)
    person = Identifier(value=str(claims["sub"])[:128], type="USER",
                        system=str(claims["iss"]).rstrip("/"))
    role = _role_for_org(engine, org, provider, claims.get(provider.role_claim))
    name = claims.get("name")
    return person, str(name)[:100] if name else None, role


def _roles(claim) -> list[str]:
    if isinstance(claim, str):
        return [r for r in re.split(r"[\s,]+", claim) if r]
    if isinstance(claim, list):
        return [r for r in claim if isinstance(r, str) and r]
    return []


def _shares_provider(engine, org: str, provider) -> bool:
    from chartbridge.review.oidc import provider_for

    for other in engine.configs.org_ids():
        if other == org:
            continue
        try:
            theirs = provider_for(other, engine.org(other))
        except ChartbridgeError:                   # a broken file: not this request's concern
            continue
        if theirs is not None and (theirs.issuer, theirs.client_id) == (provider.issuer,
                                                                         provider.client_id):
            return True
    return False


def _role_for_org(engine, org: str, provider, claim) -> str:
    roles = _roles(claim)
    bound = [m for m in map(ORG_ROLE.match, roles) if m]
    mine = [m.group("role") for m in bound if m.group("org") == org]
    if mine:
        return mine[0]
    if _shares_provider(engine, org, provider) or bound:
        raise ApiForbidden(f"the clinician token is not for this organization: its "
                           f"{provider.role_claim} claim must name it (<role>:{org}), since "
                           "its identity provider is shared with other organizations",
                           field=CLINICIAN_HEADER)
    return roles[0][:64] if roles else "clinician"


def _provider(engine, org: str):
    from chartbridge.review.oidc import provider_for

    provider = provider_for(org, engine.org(org))
    if provider is None:
        raise ApiForbidden("this organization has no identity provider (sign_in.oidc), so "
                           "no clinician can approve through the API", field=CLINICIAN_HEADER)
    return provider


def _kid(token: str) -> str | None:
    try:
        head = token.split(".", 1)[0]
        header = json.loads(base64.urlsafe_b64decode(head + "=" * (-len(head) % 4)))
    except (ValueError, TypeError):
        return None
    kid = header.get("kid") if isinstance(header, dict) else None
    return kid if isinstance(kid, str) else None


def _fetch_jwks(engine, uri: str) -> dict:
    import httpx

    try:
        with engine.services.http(timeout=10.0) as http:
            resp = http.get(uri)
        doc = resp.json() if resp.status_code == 200 else None
    except (httpx.HTTPError, ValueError):
        doc = None
    if not isinstance(doc, dict) or not isinstance(doc.get("keys"), list):
        raise IdentityProviderUnavailable("the organization's identity provider's keys "
                                          "cannot be read; try again later")
    _JWKS[uri] = (time.monotonic(), doc)
    return doc


def _keys(engine, uri: str, kid: str | None) -> dict:
    hit = _JWKS.get(uri)
    now = time.monotonic()
    if hit is None or now - hit[0] > _JWKS_TTL_S:
        return _fetch_jwks(engine, uri)
    known = {k.get("kid") for k in hit[1]["keys"] if isinstance(k, dict)}
    if kid is not None and kid not in known and now - hit[0] > REFETCH_MIN_S:
        return _fetch_jwks(engine, uri)                 # rotated: once per REFETCH_MIN_S
    return hit[1]


def _verify_id_token(engine, provider, token: str) -> dict:
    from joserfc import jwt
    from joserfc.errors import JoseError
    from joserfc.jwk import KeySet

    from chartbridge.review.oidc import SignInRefused, _discover

    try:
        doc = _discover(engine, provider)
    except SignInRefused:
        raise IdentityProviderUnavailable("the organization's identity provider cannot be "
                                          "read; try again later") from None
    refused = ApiUnauthorized("the clinician token is not a valid ID token of the "
                              "organization's identity provider", field=CLINICIAN_HEADER)
    jwks = _keys(engine, doc["jwks_uri"], _kid(token))
    try:
        claims = jwt.decode(token, KeySet.import_key_set(jwks), algorithms=ALGORITHMS).claims
    except (JoseError, ValueError, TypeError, KeyError):
        raise refused from None
    now = time.time()
    aud = claims.get("aud")
    auds = aud if isinstance(aud, list) else [aud]
    iat = claims.get("iat")
    ok = (str(claims.get("iss", "")).rstrip("/") == provider.issuer
          and provider.client_id in auds
          and (len(auds) == 1 or claims.get("azp") == provider.client_id)
          and isinstance(claims.get("exp"), (int, float)) and claims["exp"] > now - CLOCK_SKEW_S
          and isinstance(iat, (int, float)) and iat < now + CLOCK_SKEW_S
          and isinstance(claims.get("sub"), str) and claims["sub"])
    if not ok:
        raise refused
    if iat < now - MAX_TOKEN_AGE_S:
        raise ApiUnauthorized(f"the clinician token was issued more than {MAX_TOKEN_AGE_S // 60}"
                              " minutes ago; an approval needs the clinician's fresh sign-in",
                              field=CLINICIAN_HEADER)
    return claims
