"""The Epic simulator's SMART on FHIR authorization-server side, for the EHR launch of the
embedded Haiku page. Written from the SMART App Launch specification (HL7, STU 2.x,
https://hl7.org/fhir/smart-app-launch/app-launch.html) and RFC 6749 / RFC 7636, not from any
client code:

* discovery: ``{FHIR base}/.well-known/smart-configuration`` (the spec's "SMART configuration"
  document: authorization_endpoint, token_endpoint, capabilities, code_challenge_methods);
* EHR launch: the EHR opens the app's launch URL with ``iss`` (the FHIR base) and ``launch``
  (an opaque handle to the EHR's context: patient, encounter, user);
* authorize (``GET``): ``response_type=code``, a registered ``client_id`` and exact
  ``redirect_uri``, ``scope`` (``launch`` for an EHR launch), ``state``, ``aud`` equal to the
  FHIR base, ``launch`` known and unexpired, and PKCE with ``code_challenge_method=S256``
  (SMART 2: "S256" required, "plain" must not be supported). A bad client or redirect URI is
  answered here (never redirected, RFC 6749 4.1.2.1); any other error is redirected back
  with ``error`` and the ``state``;
* token (``POST``, form): ``grant_type=authorization_code``, the ``code`` once and before it
  expires, the same ``redirect_uri`` and ``client_id``, and a ``code_verifier`` whose S256
  matches the challenge. The answer carries ``access_token``, ``token_type``, ``expires_in``,
  ``scope`` and the launch context ``patient`` and ``encounter`` (SMART "launch context
  arrives with the access token"), with ``Cache-Control: no-store``.

It lives on its own paths and leaves the simulator's Backend Services token endpoint alone.
"""
from __future__ import annotations

import base64
import hashlib
import secrets
import threading
from dataclasses import dataclass, field
from typing import Any, Callable
from urllib.parse import urlencode

from flask import Flask, Response, redirect, request

from chartbridge.core.errors import InputError, NotFound

FHIR_BASE_PATH = "/api/FHIR/R4"
AUTHORIZE_PATH = "/oauth2/smart/authorize"
SMART_TOKEN_PATH = "/oauth2/smart/token"
CODE_TTL_S = 60            # RFC 6749 4.1.2: short-lived, ten minutes at most
LAUNCH_TTL_S = 300
ACCESS_TTL_S = 3600


@dataclass
class LaunchContext:
    patient: str
    encounter: str | None = None
    user: str | None = None
    expires: float = 0.0


@dataclass
class _Code:
    client_id: str
    redirect_uri: str
    challenge: str
    scope: str
    context: LaunchContext
    expires: float
    used: bool = False


@dataclass
class AuthorizeRecord:
    """One authorize request as received (for tests to check what a client sent)."""

    params: dict[str, str]
    outcome: str                 # "code" or the OAuth error code


@dataclass
class SmartState:
    apps: dict[str, set[str]] = field(default_factory=dict)          # client id -> redirect URIs
    launches: dict[str, LaunchContext] = field(default_factory=dict)
    codes: dict[str, _Code] = field(default_factory=dict)
    tokens: dict[str, dict[str, Any]] = field(default_factory=dict)
    authorize_log: list[AuthorizeRecord] = field(default_factory=list)
    token_log: list[tuple[str, int]] = field(default_factory=list)     # (error or "ok", status)


def s256(verifier: str) -> str:
    """RFC 7636 4.2: BASE64URL-ENCODE(SHA256(ASCII(code_verifier))), no padding."""
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


class _OAuthError(Exception):
    def __init__(self, code: str, description: str, status: int = 400) -> None:
        super().__init__(description)
        self.code, self.description, self.status = code, description, status


class SmartAuthServer:
    """Mounted into the simulator's Flask app. ``base_url()`` is the simulator's base."""

    def __init__(self, base_url: Callable[[], str], *, clock: Callable[[], float]) -> None:
        self._base_url = base_url
        self.clock = clock
        self._lock = threading.Lock()
        self.state = SmartState()

    # -- URLs -------------------------------------------------------------------------------
    @property
    def fhir_base(self) -> str:
        return self._base_url() + FHIR_BASE_PATH

    @property
    def authorize_url(self) -> str:
        return self._base_url() + AUTHORIZE_PATH

    @property
    def token_url(self) -> str:
        return self._base_url() + SMART_TOKEN_PATH

    # -- the EHR side of a launch --------------------------------------------------------------
    def register_app(self, client_id: str, redirect_uris: list[str]) -> None:
        """A public SMART client (no secret) with its exact redirect URIs."""
        if not client_id or not redirect_uris:
            raise InputError("client_id and at least one redirect URI are required",
                             field="redirect_uris" if client_id else "client_id")
        with self._lock:
            self.state.apps[client_id] = set(redirect_uris)

    def new_launch(self, *, patient: str, encounter: str | None = None,
                   user: str | None = None, ttl_s: float = LAUNCH_TTL_S) -> str:
        """The EHR's opaque `launch` handle for a context (what the EHR puts in the URL)."""
        launch = secrets.token_urlsafe(16)
        with self._lock:
            self.state.launches[launch] = LaunchContext(patient, encounter, user,
                                                        self.clock() + ttl_s)
        return launch

    def launch_url(self, app_launch_url: str, launch: str, **extra: str) -> str:
        """The URL the EHR opens: the app's launch URL with `iss` and `launch` (plus extras,
        e.g. Haiku's `session`)."""
        sep = "&" if "?" in app_launch_url else "?"
        return app_launch_url + sep + urlencode({**extra, "iss": self.fhir_base,
                                                 "launch": launch})

    @staticmethod
    def fhir_ids_of(begin_body: dict[str, Any]) -> tuple[str, str | None]:
        """The FHIR patient and encounter ids of an AmbientSessionBegin body."""
        def fhir(ids):
            return next((i["ID"] for i in ids or [] if str(i.get("Type", "")).upper() == "FHIR"),
                        None)
        patient = fhir(begin_body.get("PatientIDs"))
        if patient is None:
            raise NotFound("the session has no FHIR patient id")
        return patient, fhir(begin_body.get("EncounterIDs"))

    # -- HTTP --------------------------------------------------------------------------------
    def mount(self, app: Flask) -> None:
        app.add_url_rule(FHIR_BASE_PATH + "/.well-known/smart-configuration",
                         "smart_configuration", self._configuration, methods=["GET"])
        app.add_url_rule(AUTHORIZE_PATH, "smart_authorize", self._authorize, methods=["GET"])
        app.add_url_rule(SMART_TOKEN_PATH, "smart_token", self._token, methods=["POST"])

    def _configuration(self) -> Response:
        return _json({
            "issuer": self.fhir_base,
            "authorization_endpoint": self.authorize_url,
            "token_endpoint": self.token_url,
            "token_endpoint_auth_methods_supported": ["none"],
            "grant_types_supported": ["authorization_code"],
            "response_types_supported": ["code"],
            "scopes_supported": ["launch", "openid", "fhirUser", "patient/*.rs",
                                 "user/*.rs", "offline_access"],
            "code_challenge_methods_supported": ["S256"],
            "capabilities": ["launch-ehr", "client-public", "context-ehr-patient",
                             "context-ehr-encounter", "permission-patient", "permission-user"],
        })

    def _authorize(self) -> Response:
        params = {k: v for k, v in request.args.items()}
        client_id, redirect_uri = params.get("client_id"), params.get("redirect_uri")
        with self._lock:
            allowed = self.state.apps.get(client_id or "")
        if not allowed:
            return self._log_page(params, "unauthorized_client",
                                  "client_id is not a registered SMART app")
        if not redirect_uri or redirect_uri not in allowed:
            return self._log_page(params, "invalid_request",
                                  "redirect_uri is not registered for this app")
        state = params.get("state")
        try:
            code = self._issue_code(params, client_id, redirect_uri)
        except _OAuthError as err:
            self._log(params, err.code)
            query = {"error": err.code, "error_description": err.description}
            if state:
                query["state"] = state
            return redirect(_add_query(redirect_uri, query), code=302)
        self._log(params, "code")
        return redirect(_add_query(redirect_uri, {"code": code, "state": state}), code=302)

    def _issue_code(self, params: dict[str, str], client_id: str, redirect_uri: str) -> str:
        if params.get("response_type") != "code":
            raise _OAuthError("unsupported_response_type", "response_type must be code")
        if not params.get("state"):
            raise _OAuthError("invalid_request", "state is required")
        scope = params.get("scope") or ""
        scopes = scope.split()
        if not scopes:
            raise _OAuthError("invalid_scope", "scope is required")
        if params.get("aud", "").rstrip("/") != self.fhir_base:
            raise _OAuthError("invalid_request", "aud must be this server's FHIR base URL")
        method, challenge = params.get("code_challenge_method"), params.get("code_challenge")
        if method != "S256" or not challenge:
            raise _OAuthError("invalid_request",
                              "PKCE is required with code_challenge_method S256")
        if not 43 <= len(challenge) <= 128:
            raise _OAuthError("invalid_request", "code_challenge is not an S256 challenge")
        launch = params.get("launch")
        if "launch" not in scopes or not launch:
            raise _OAuthError("invalid_request", "an EHR launch needs the launch scope and "
                                                 "the launch parameter")
        now = self.clock()
        with self._lock:
            context = self.state.launches.get(launch)
            if context is None or context.expires <= now:
                raise _OAuthError("invalid_request", "launch is unknown or expired")
            code = secrets.token_urlsafe(24)
            self.state.codes[code] = _Code(client_id, redirect_uri, challenge, scope, context,
                                           now + CODE_TTL_S)
        return code

    def _token(self) -> Response:
        form = request.form
        try:
            if form.get("grant_type") != "authorization_code":
                raise _OAuthError("unsupported_grant_type", "grant_type must be authorization_code")
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
                    # RFC 6749 4.1.2: a code used twice is refused (and its tokens revoked)
                    for tok, info in list(self.state.tokens.items()):
                        if info.get("code") == code_value:
                            del self.state.tokens[tok]
                    raise _OAuthError("invalid_grant", "code was already used")
                code.used = True
            if form.get("client_id") != code.client_id:
                raise _OAuthError("invalid_grant", "client_id does not match the code")
            if form.get("redirect_uri") != code.redirect_uri:
                raise _OAuthError("invalid_grant", "redirect_uri does not match the authorize request")
            if not secrets.compare_digest(s256(verifier), code.challenge):
                raise _OAuthError("invalid_grant", "code_verifier does not match the code_challenge")
        except _OAuthError as err:
            with self._lock:
                self.state.token_log.append((err.code, err.status))
            return _json({"error": err.code, "error_description": err.description}, err.status,
                         no_store=True)
        token = secrets.token_urlsafe(32)
        body: dict[str, Any] = {"access_token": token, "token_type": "Bearer",
                                "expires_in": ACCESS_TTL_S, "scope": code.scope,
                                "patient": code.context.patient, "need_patient_banner": False}
        if code.context.encounter:
            body["encounter"] = code.context.encounter
        with self._lock:
            self.state.tokens[token] = {"code": code_value, "client_id": code.client_id,
                                        "patient": code.context.patient,
                                        "expires": self.clock() + ACCESS_TTL_S}
            self.state.token_log.append(("ok", 200))
        return _json(body, no_store=True)

    # -- helpers -----------------------------------------------------------------------------
    def _log(self, params: dict[str, str], outcome: str) -> None:
        with self._lock:
            self.state.authorize_log.append(AuthorizeRecord(dict(params), outcome))

    def _log_page(self, params: dict[str, str], code: str, description: str) -> Response:
        self._log(params, code)
        return _json({"error": code, "error_description": description}, 400)

    @property
    def authorize_requests(self) -> list[AuthorizeRecord]:
        with self._lock:
            return list(self.state.authorize_log)

    @property
    def token_results(self) -> list[tuple[str, int]]:
        with self._lock:
            return list(self.state.token_log)


def _add_query(url: str, params: dict[str, Any]) -> str:
    sep = "&" if "?" in url else "?"
    return url + sep + urlencode({k: v for k, v in params.items() if v is not None})


def _json(body: Any, status: int = 200, *, no_store: bool = False) -> Response:
    import json
    resp = Response(json.dumps(body), status=status, content_type="application/json")
    if no_store:
        resp.headers["Cache-Control"] = "no-store"
        resp.headers["Pragma"] = "no-cache"
    return resp
