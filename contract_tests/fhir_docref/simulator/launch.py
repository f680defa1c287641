"""The FHIR simulator's SMART EHR launch: an authorization server per the SMART App Launch
specification (HL7, STU 2.2, https://hl7.org/fhir/smart-app-launch/app-launch.html), RFC 6749
(authorization code), RFC 7636 (PKCE) and OpenID Connect Core 1.0 (the id_token). Written
from those documents, not from any client code in this repository:

* discovery: the server's ``/.well-known/smart-configuration`` gains ``issuer``,
  ``jwks_uri``, ``authorization_endpoint``, ``response_types_supported: [code]``,
  ``code_challenge_methods_supported: [S256]`` and the capabilities ``launch-ehr``,
  ``client-public``, ``context-ehr-patient``, ``context-ehr-encounter``,
  ``sso-openid-connect`` (SMART 2.2 "Conformance");
* EHR launch: the EHR opens the app's launch URL with ``iss`` (this FHIR base) and
  ``launch`` (an opaque handle for patient, encounter and user; ``new_launch``);
* ``GET /oauth2/authorize``: ``response_type=code``, a registered ``client_id`` and exact
  ``redirect_uri`` (else answered here, never redirected: RFC 6749 4.1.2.1), ``state``,
  ``scope`` containing ``launch``, ``aud`` equal to the FHIR base, a known unexpired
  ``launch``, and PKCE ``code_challenge_method=S256`` ("plain" is not offered, SMART 2);
  every other error is redirected back with ``error`` and the ``state``;
* ``POST /oauth2/token`` with ``grant_type=authorization_code`` (the simulator's Backend
  Services grant stays auth.py's): the code once and before it expires, the same
  ``redirect_uri`` and ``client_id``, a ``code_verifier`` whose S256 is the challenge. The
  answer: ``access_token``, ``token_type``, ``expires_in``, ``scope``, the launch context
  ``patient`` and ``encounter``, and with ``openid fhirUser`` requested an ``id_token``
  (RS256, iss = ``issuer``, aud = the client id, ``sub``, ``fhirUser`` = the user's
  resource URL, ``name``, ``iat``/``exp``), ``Cache-Control: no-store``.
"""
from __future__ import annotations

import base64
import hashlib
import json
import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable
from urllib.parse import urlencode

from cryptography.hazmat.primitives.asymmetric import rsa
from werkzeug.wrappers import Request, Response

from chartbridge.core.errors import InputError

AUTHORIZE_PATH = "/oauth2/authorize"
TOKEN_PATH = "/oauth2/token"
JWKS_PATH = "/oauth2/launch-jwks"
CODE_TTL_S = 60            # RFC 6749 4.1.2: short-lived, ten minutes at most
LAUNCH_TTL_S = 600
ACCESS_TTL_S = 3600
ID_TOKEN_TTL_S = 300
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


@dataclass
class LaunchContext:
    patient: str
    encounter: str | None
    user: str                 # relative FHIR reference, e.g. Practitioner/abc
    name: str | None
    expires: float


@dataclass
class _Code:
    client_id: str
    redirect_uri: str
    challenge: str
    scope: str
    nonce: str | None
    context: LaunchContext
    expires: float
    used: bool = False


@dataclass
class AuthorizeRecord:
    """One authorize request as received, for tests to check what a client sent."""

    params: dict[str, str]
    outcome: str              # "code" or the OAuth error code


@dataclass
class _State:
    apps: dict[str, set[str]] = field(default_factory=dict)       # client id -> redirect URIs
    launches: dict[str, LaunchContext] = field(default_factory=dict)
    codes: dict[str, _Code] = field(default_factory=dict)
    tokens: dict[str, dict[str, Any]] = field(default_factory=dict)
    authorize_log: list[AuthorizeRecord] = field(default_factory=list)
    token_log: list[tuple[str, int]] = field(default_factory=list)


class _OAuthError(Exception):
    def __init__(self, code: str, description: str, status: int = 400) -> None:
        super().__init__(description)
        self.code, self.description, self.status = code, description, status


def s256(verifier: str) -> str:
    """RFC 7636 4.2: BASE64URL(SHA256(ASCII(code_verifier))), no padding."""
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


class SmartLaunch:
    """The EHR-launch authorization server of one FhirSimulator; ``base_url()`` is its FHIR
    base (what the launch sends as ``iss``)."""

    def __init__(self, base_url: Callable[[], str | None], *,
                 clock: Callable[[], float] = time.time) -> None:
        self._base_url = base_url
        self.clock = clock
        self._lock = threading.Lock()
        self.state = _State()
        self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.kid = "sim-launch-" + secrets.token_hex(4)

    # -- URLs ---------------------------------------------------------------------------------
    @property
    def fhir_base(self) -> str:
        base = self._base_url()
        if not base:
            raise InputError("simulator not started", field="base_url")
        return base

    @property
    def issuer(self) -> str:
        return self.fhir_base + "/oauth2"

    @property
    def authorize_url(self) -> str:
        return self.fhir_base + AUTHORIZE_PATH

    @property
    def token_url(self) -> str:
        return self.fhir_base + TOKEN_PATH

    @property
    def jwks_uri(self) -> str:
        return self.fhir_base + JWKS_PATH

    def owns(self, path: str, base_path: str = "") -> bool:
        return path in (base_path + AUTHORIZE_PATH, base_path + JWKS_PATH)

    # -- the EHR's side -------------------------------------------------------------------------
    def register_app(self, client_id: str, redirect_uris: list[str]) -> None:
        """A public SMART client (no secret) with its exact redirect URIs."""
        if not client_id or not redirect_uris:
            raise InputError("client_id and at least one redirect URI are required",
                             field="redirect_uris" if client_id else "client_id")
        with self._lock:
            self.state.apps[client_id] = set(redirect_uris)

    def new_launch(self, *, patient: str, encounter: str | None = None,
                   user: str = "Practitioner/sim-clinician", name: str | None = None,
                   ttl_s: float = LAUNCH_TTL_S) -> str:
        """The EHR's opaque ``launch`` handle for a context (what it puts in the URL)."""
        launch = secrets.token_urlsafe(16)
        with self._lock:
            self.state.launches[launch] = LaunchContext(patient, encounter, user, name,
                                                        self.clock() + ttl_s)
        return launch

    def launch_url(self, app_launch_url: str, launch: str) -> str:
        """The URL the EHR opens: the app's launch URL with ``iss`` and ``launch``."""
        sep = "&" if "?" in app_launch_url else "?"
        return app_launch_url + sep + urlencode({"iss": self.fhir_base, "launch": launch})

    @property
    def authorize_requests(self) -> list[AuthorizeRecord]:
        with self._lock:
            return list(self.state.authorize_log)

    @property
    def token_results(self) -> list[tuple[str, int]]:
        with self._lock:
            return list(self.state.token_log)

    def access_token_info(self, token: str) -> dict[str, Any] | None:
        with self._lock:
            info = self.state.tokens.get(token)
            return dict(info) if info else None

    # -- discovery ------------------------------------------------------------------------------
    def configuration(self) -> dict[str, Any]:
        """The EHR-launch members of the server's smart-configuration."""
        return {
            "issuer": self.issuer,
            "jwks_uri": self.jwks_uri,
            "authorization_endpoint": self.authorize_url,
            "response_types_supported": ["code"],
            "code_challenge_methods_supported": ["S256"],
            "grant_types_supported": ["authorization_code"],
            "token_endpoint_auth_methods_supported": ["none"],
            "scopes_supported": ["launch", "openid", "fhirUser", "patient/*.rs", "user/*.rs"],
            "capabilities": ["launch-ehr", "client-public", "context-ehr-patient",
                             "context-ehr-encounter", "sso-openid-connect",
                             "permission-patient", "permission-user"],
        }

    def jwks(self) -> dict[str, Any]:
        numbers = self._key.public_key().public_numbers()

        def uint(n: int) -> str:
            return _b64(n.to_bytes((n.bit_length() + 7) // 8, "big"))
        return {"keys": [{"kty": "RSA", "use": "sig", "alg": "RS256", "kid": self.kid,
                          "n": uint(numbers.n), "e": uint(numbers.e)}]}

    # -- HTTP -----------------------------------------------------------------------------------
    def handle(self, request: Request) -> Response:
        if request.path.endswith(JWKS_PATH):
            return _json(self.jwks())
        if request.method != "GET":
            return _json({"error": "invalid_request", "error_description": "use GET"}, 405)
        return self._authorize(request)

    def _authorize(self, request: Request) -> Response:
        params = {k: v for k, v in request.args.items()}
        client_id, redirect_uri = params.get("client_id"), params.get("redirect_uri")
        with self._lock:
            allowed = self.state.apps.get(client_id or "")
        if not allowed:
            return self._answer_here(params, "unauthorized_client",
                                     "client_id is not a registered SMART app")
        if not redirect_uri or redirect_uri not in allowed:
            return self._answer_here(params, "invalid_request",
                                     "redirect_uri is not registered for this app")
        state = params.get("state")
        try:
            code = self._issue_code(params, client_id, redirect_uri)
        except _OAuthError as err:
            self._log(params, err.code)
            query = {"error": err.code, "error_description": err.description, "state": state}
            return _redirect(_add_query(redirect_uri, query))
        self._log(params, "code")
        return _redirect(_add_query(redirect_uri, {"code": code, "state": state}))

    def _issue_code(self, params: dict[str, str], client_id: str, redirect_uri: str) -> str:
        if params.get("response_type") != "code":
            raise _OAuthError("unsupported_response_type", "response_type must be code")
        if not params.get("state"):
            raise _OAuthError("invalid_request", "state is required")
        scope = params.get("scope") or ""
        if not scope.split():
            raise _OAuthError("invalid_scope", "scope is required")
        if params.get("aud", "").rstrip("/") != self.fhir_base:
            raise _OAuthError("invalid_request", "aud must be this server's FHIR base URL")
        method, challenge = params.get("code_challenge_method"), params.get("code_challenge")
        if method != "S256" or not challenge:
            raise _OAuthError("invalid_request", "PKCE is required with code_challenge_method S256")
        if not 43 <= len(challenge) <= 128:
            raise _OAuthError("invalid_request", "code_challenge is not an S256 challenge")
        launch = params.get("launch")
        if "launch" not in scope.split() or not launch:
            raise _OAuthError("invalid_request",
                              "an EHR launch needs the launch scope and the launch parameter")
        now = self.clock()
        with self._lock:
            context = self.state.launches.get(launch)
            if context is None or context.expires <= now:
                raise _OAuthError("invalid_request", "launch is unknown or expired")
            code = secrets.token_urlsafe(24)
            self.state.codes[code] = _Code(client_id, redirect_uri, challenge, scope,
                                           params.get("nonce"), context, now + CODE_TTL_S)
        return code

    def token(self, request: Request) -> Response:
        """The authorization_code grant of the server's token endpoint."""
        form = request.form
        try:
            code_value, verifier = form.get("code"), form.get("code_verifier")
            if not code_value:
                raise _OAuthError("invalid_request", "code is required")
            if not verifier:
                raise _OAuthError("invalid_request", "code_verifier is required")
            now = self.clock()
            with self._lock:
                code = self.state.codes.get(code_value)
                if code is None or code.expires <= now:
                    raise _OAuthError("invalid_grant", "code is unknown or expired")
                if code.used:
                    # RFC 6749 4.1.2: a code used twice is refused and its tokens revoked
                    self.state.tokens = {t: i for t, i in self.state.tokens.items()
                                         if i.get("code") != code_value}
                    raise _OAuthError("invalid_grant", "code was already used")
                code.used = True
            if form.get("client_id") != code.client_id:
                raise _OAuthError("invalid_grant", "client_id does not match the code")
            if form.get("redirect_uri") != code.redirect_uri:
                raise _OAuthError("invalid_grant",
                                  "redirect_uri does not match the authorize request")
            if not secrets.compare_digest(s256(verifier), code.challenge):
                raise _OAuthError("invalid_grant",
                                  "code_verifier does not match the code_challenge")
        except _OAuthError as err:
            with self._lock:
                self.state.token_log.append((err.code, err.status))
            return _json({"error": err.code, "error_description": err.description},
                         err.status, NO_STORE)
        ctx = code.context
        access = secrets.token_urlsafe(32)
        body: dict[str, Any] = {"access_token": access, "token_type": "Bearer",
                                "expires_in": ACCESS_TTL_S, "scope": code.scope,
                                "patient": ctx.patient, "need_patient_banner": True}
        if ctx.encounter:
            body["encounter"] = ctx.encounter
        scopes = code.scope.split()
        if "openid" in scopes and ("fhirUser" in scopes or "profile" in scopes):
            body["id_token"] = self._id_token(code, now)
        with self._lock:
            self.state.tokens[access] = {"code": code_value, "client_id": code.client_id,
                                         "patient": ctx.patient, "encounter": ctx.encounter,
                                         "user": ctx.user, "expires": now + ACCESS_TTL_S}
            self.state.token_log.append(("ok", 200))
        return _json(body, 200, NO_STORE)

    def _id_token(self, code: _Code, now: float) -> str:
        """OpenID Connect Core 2 + SMART's fhirUser claim, signed RS256 (JWS compact)."""
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import padding

        ctx = code.context
        claims: dict[str, Any] = {"iss": self.issuer, "sub": ctx.user.rsplit("/", 1)[-1],
                                  "aud": code.client_id, "iat": int(now),
                                  "exp": int(now) + ID_TOKEN_TTL_S,
                                  "fhirUser": f"{self.fhir_base}/{ctx.user}"}
        if ctx.name:
            claims["name"] = ctx.name
        if code.nonce:
            claims["nonce"] = code.nonce
        header = {"alg": "RS256", "typ": "JWT", "kid": self.kid}
        signing_input = (_b64(json.dumps(header).encode()) + "."
                         + _b64(json.dumps(claims).encode())).encode("ascii")
        signature = self._key.sign(signing_input, padding.PKCS1v15(), hashes.SHA256())
        return signing_input.decode("ascii") + "." + _b64(signature)

    # -- helpers --------------------------------------------------------------------------------
    def _log(self, params: dict[str, str], outcome: str) -> None:
        with self._lock:
            self.state.authorize_log.append(AuthorizeRecord(dict(params), outcome))

    def _answer_here(self, params: dict[str, str], code: str, description: str) -> Response:
        self._log(params, code)
        return _json({"error": code, "error_description": description}, 400)


def _add_query(url: str, params: dict[str, Any]) -> str:
    sep = "&" if "?" in url else "?"
    return url + sep + urlencode({k: v for k, v in params.items() if v is not None})


def _redirect(url: str) -> Response:
    return Response(b"", status=302, headers={"Location": url})


def _json(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(json.dumps(body), status=status, content_type="application/json",
                    headers=headers or {})
