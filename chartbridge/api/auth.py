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
