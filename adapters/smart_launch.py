"""The SMART on FHIR EHR launch, as a client: what every page an EHR opens does the same way
(the embedded Haiku page, the ambient recorder).

`SmartLaunch.begin` answers the app's launch URL (`iss`, `launch`): it discovers
`{iss}/.well-known/smart-configuration` (cached per `iss`, so anonymous launches call out at
most once per TTL) and redirects to the authorization endpoint with authlib as the client:
PKCE S256, `state`, `aud` = `iss`, `launch`, and a `nonce` when `openid` is asked for. What
the callback must remember (state, verifier, nonce, token endpoint, the caller's own
fields) travels in a sealed cookie: an anonymous launch writes nothing. `SmartLaunch.complete`
reads the callback against that cookie (same org, in time, same state, no `error`), exchanges
the code, and, when the token answer carries an `id_token`, checks it (signature by the
discovered `jwks_uri`, `iss` = the discovered issuer, `aud` = our client id, `exp`, the
nonce) and returns its claims (`fhirUser`, `sub`, `name`).

A caller that knows its authorization server (an org file's `authorization_server`) passes
it to `begin` and `complete`: the discovered `issuer` must be that server and the
authorization and token endpoints must be on its origin, or the launch is refused before the
browser is sent anywhere (a FHIR server whose discovery points elsewhere is not trusted).

Nothing here names a vendor: the caller passes the words its pages use (`ehr`, `reopen`).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import httpx

from chartbridge.core.errors import ChartbridgeError, InputError

log = logging.getLogger("chartbridge.smart_launch")

LAUNCH_TTL_S = 600
DISCOVERY_TTL_S = 300        # a discovered SMART configuration is reused this long
JWKS_TTL_S = 300
ID_TOKEN_ALGS = ["RS256", "RS384", "ES256", "ES384"]


class LaunchRefused(ChartbridgeError):
    code = "launch_refused"
    http_status = 403


@dataclass(frozen=True)
class Completed:
    pending: dict[str, Any]      # what `begin` was given to remember (and state, iss...)
    token: dict[str, Any]        # the token endpoint's answer (access_token, patient, ...)
    id_claims: dict[str, Any] | None   # the checked id_token's claims, if one came


class SmartLaunch:
    """One page's launch: `cookie` names its sealed cookie, `scope` what it asks for."""

    def __init__(self, engine, *, cookie: str, scope: str, ehr: str = "The EHR",
                 reopen: str = "open the page again from the EHR",
                 require_identity: bool = False) -> None:
        from chartbridge.review.websession import SealedCookie

        self.engine, self.scope, self.ehr, self.reopen = engine, scope, ehr, reopen
        self.require_identity = require_identity
        self.cookie = SealedCookie(cookie, lifetime_s=LAUNCH_TTL_S)
        self._discovered: dict[str, tuple[float, dict]] = {}
        self._jwks: dict[str, tuple[float, dict]] = {}

    # -- launch -------------------------------------------------------------------------------
    def begin(self, *, org: str, iss: str, launch: str, client_id: str, redirect_uri: str,
              remember: dict[str, Any] | None = None,
              authorization_server: str | None = None) -> tuple[str, dict[str, Any]]:
        """(the authorization URL, the pending state to `save` on the redirect).
        `authorization_server`: when given, discovery must name it (see the module doc)."""
        from authlib.common.security import generate_token
        from authlib.integrations.httpx_client import OAuth2Client

        smart = self.discover(iss)
        self._check_server(smart, authorization_server)
        verifier = generate_token(64)
        extra: dict[str, str] = {"launch": launch, "aud": iss}
        nonce = None
        if "openid" in self.scope.split():
            nonce = generate_token(32)
            extra["nonce"] = nonce
        client = OAuth2Client(client_id=client_id, scope=self.scope, redirect_uri=redirect_uri,
                              code_challenge_method="S256", token_endpoint_auth_method="none")
        try:
            url, state = client.create_authorization_url(
                smart["authorization_endpoint"], code_verifier=verifier, **extra)
        finally:
            client.close()
        pending = dict(remember or {}, org=org, state=state, verifier=verifier, nonce=nonce,
                       iss=iss, token_endpoint=smart["token_endpoint"],
                       started=self.engine.clock.now().timestamp())
        return url, pending

    def save(self, pending: dict[str, Any], response, *, path: str) -> None:
        self.cookie.save(pending, response, path=path)

    def clear(self, response, *, path: str) -> None:
        self.cookie.clear(response, path=path)

    def pending(self, org: str) -> dict[str, Any]:
        """The launch this browser started for `org`, checked against the callback's state."""
        import secrets

        from flask import request

        pending = self.cookie.load()
        if not pending or pending.get("org") != org:
            raise InputError("this sign-in link is not from a launch in this browser; "
                             + self.reopen, field="state")
        if self.engine.clock.now().timestamp() - pending.get("started", 0) > LAUNCH_TTL_S:
            raise InputError("the launch took too long; " + self.reopen, field="state")
        if not secrets.compare_digest(request.args.get("state", ""), str(pending["state"])):
            raise InputError("the sign-in answer does not belong to this launch", field="state")
        return pending

    def complete(self, pending: dict[str, Any], *, client_id: str, redirect_uri: str,
                 issuer: str | None = None,
                 authorization_server: str | None = None) -> Completed:
        """Exchange the callback's code; check the id_token when there is one (and require
        one when the launch was built with `require_identity`). `issuer`: the id_token's expected `iss` (default:
        the discovered `issuer`)."""
        from flask import request

        self._check_server(self.discover(pending["iss"]), authorization_server)
        code = request.args.get("code", "")
        if not code:
            raise InputError("the sign-in answer has no authorization code", field="code")
        token = self.exchange(pending, code, client_id=client_id, redirect_uri=redirect_uri)
        claims = None
        if self.require_identity or token.get("id_token"):
            claims = self.check_id_token(pending, token.get("id_token"), client_id=client_id,
                                         issuer=issuer)
        return Completed(pending, token, claims)

    # -- discovery ------------------------------------------------------------------------------
    def _check_server(self, smart: dict, expected: str | None) -> None:
        """Refuse a discovery document that names another authorization server than the
        configured one (issuer, and the origin of both endpoints)."""
        if expected is None:
            return
        want = str(expected).rstrip("/")
        issuer = smart.get("issuer")
        if not isinstance(issuer, str) or issuer.rstrip("/") != want:
            log.info("launch refused", extra={"reason": "authorization_server_mismatch"})
            raise LaunchRefused(f"{self.ehr}'s FHIR server names another authorization server "
                                "than this organization's; " + self.reopen, field="issuer")
        for name in ("authorization_endpoint", "token_endpoint"):
            if _origin(smart[name]) != _origin(want):
                log.info("launch refused", extra={"reason": "authorization_server_mismatch"})
                raise LaunchRefused(f"{self.ehr}'s {name} is not on this organization's "
                                    "authorization server; " + self.reopen, field=name)

    def discover(self, iss: str) -> dict:
        now = self.engine.clock.now().timestamp()
        hit = self._discovered.get(iss)
        if hit is not None and now - hit[0] < DISCOVERY_TTL_S:
            return hit[1]
        doc = _discover(self.engine, iss, self.ehr)
        if len(self._discovered) > 64:
            self._discovered.clear()
        self._discovered[iss] = (now, doc)
        return doc

    # -- the code exchange --------------------------------------------------------------------
    def exchange(self, pending: dict[str, Any], code: str, *, client_id: str,
                 redirect_uri: str) -> dict:
        from authlib.integrations.base_client.errors import OAuthError
        from authlib.integrations.httpx_client import OAuth2Client

        try:
            with OAuth2Client(client_id=client_id, code_challenge_method="S256",
                              token_endpoint_auth_method="none", timeout=10.0,
                              redirect_uri=redirect_uri) as client:
                token = client.fetch_token(pending["token_endpoint"], code=code,
                                           code_verifier=pending["verifier"],
                                           grant_type="authorization_code")
        except OAuthError as exc:
            raise LaunchRefused(f"{self.ehr} refused to complete the sign-in; {self.reopen}",
                                vendor_code=getattr(exc, "error", None)) from None
        except (httpx.HTTPError, ValueError) as exc:
            raise LaunchRefused(f"{self.ehr} could not be reached to complete the sign-in",
                                reason=type(exc).__name__) from None
        return dict(token)

    # -- the id_token (OpenID Connect Core 3.1.3.7) ------------------------------------------
    def check_id_token(self, pending: dict[str, Any], id_token: Any, *, client_id: str,
                       issuer: str | None = None) -> dict[str, Any]:
        from joserfc import jwt
        from joserfc.errors import JoseError
        from joserfc.jwk import KeySet

        if not isinstance(id_token, str) or not id_token or len(id_token) > 16_384:
            raise LaunchRefused(f"{self.ehr} did not say who signed in (no id_token)")
        smart = self.discover(pending["iss"])
        expected_iss = issuer or smart.get("issuer")
        jwks_uri = smart.get("jwks_uri")
        if not expected_iss or not isinstance(jwks_uri, str):
            raise LaunchRefused(f"{self.ehr}'s SMART configuration has no issuer or jwks_uri")
        try:
            keys = KeySet.import_key_set(self._keys(jwks_uri))
            claims = jwt.decode(id_token, keys, algorithms=ID_TOKEN_ALGS).claims
            jwt.JWTClaimsRegistry(
                leeway=60, now=int(self.engine.clock.now().timestamp()),
                iss={"essential": True, "value": str(expected_iss)},
                aud={"essential": True, "value": client_id},
                exp={"essential": True}, sub={"essential": True}).validate(claims)
        except (JoseError, ValueError, KeyError, TypeError) as exc:
            log.info("id_token refused", extra={"reason": type(exc).__name__})
            raise LaunchRefused(f"{self.ehr}'s statement of who signed in does not verify; "
                                + self.reopen, reason=type(exc).__name__) from None
        if pending.get("nonce") and claims.get("nonce") != pending["nonce"]:
            raise LaunchRefused(f"{self.ehr}'s sign-in answer is not for this launch",
                                reason="nonce")
        return dict(claims)

    def _keys(self, jwks_uri: str) -> dict:
        now = self.engine.clock.now().timestamp()
        hit = self._jwks.get(jwks_uri)
        if hit is not None and now - hit[0] < JWKS_TTL_S:
            return hit[1]
        doc = _fetch_json(self.engine, jwks_uri, "signing keys", self.ehr)
        if len(self._jwks) > 64:
            self._jwks.clear()
        self._jwks[jwks_uri] = (now, doc)
        return doc


def _discover(engine, iss: str, ehr: str) -> dict:
    doc = _fetch_json(engine, iss.rstrip("/") + "/.well-known/smart-configuration",
                      "SMART configuration", ehr)
    for name in ("authorization_endpoint", "token_endpoint"):
        if not isinstance(doc.get(name), str) or not doc[name].startswith(("https://", "http://")):
            raise LaunchRefused(f"{ehr}'s SMART configuration has no {name}", field=name)
    if "S256" not in (doc.get("code_challenge_methods_supported") or ["S256"]):
        raise LaunchRefused(f"{ehr}'s SMART server does not offer PKCE S256")
    return doc


def _fetch_json(engine, url: str, what: str, ehr: str) -> dict:
    try:
        with engine.services.http(timeout=10.0) as http:
            resp = http.get(url, headers={"Accept": "application/json"})
        if resp.status_code != 200:
            raise LaunchRefused(f"{ehr}'s {what} could not be read", status=resp.status_code)
        doc = resp.json()
    except (httpx.HTTPError, ValueError) as exc:
        raise LaunchRefused(f"{ehr}'s {what} could not be read",
                            reason=type(exc).__name__) from None
    if not isinstance(doc, dict):
        raise LaunchRefused(f"{ehr}'s {what} is not a JSON object")
    return doc


def _origin(url: str) -> tuple[str, str, int | None]:
    parsed = httpx.URL(url)
    return parsed.scheme, parsed.host, parsed.port


def same_base(got: str, expected: str) -> bool:
    """The launch's `iss` is the configured FHIR base (a trailing slash aside)."""
    return got.rstrip("/") == str(expected).rstrip("/")
