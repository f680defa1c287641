"""athenaOne authentication (docs.athenahealth.com, "Authentication"): OAuth 2.0 client
credentials with HTTP Basic client auth at ``/oauth2/v1/token``, registered scopes, a
per-client token-request rate limit (429), bearer tokens bound to one practice."""
from __future__ import annotations

import secrets
import threading
from collections import deque
from dataclasses import dataclass
from typing import Callable, Iterable

from werkzeug.wrappers import Request, Response

from chartbridge.core.errors import InputError
from contract_tests.support.http import json_response

from .validation import athena_error, retry_after_header

DEFAULT_CLIENT_ID = "sim-client"
DEFAULT_CLIENT_SECRET = "sim-secret"  # a simulator-only credential, never a real one
DEFAULT_SCOPE = "athena/service/Athenanet.MDP.*"
TOKEN_RATE_PER_MIN = {"production": 50, "preview": 5}


@dataclass
class Client:
    client_id: str
    secret: str
    practiceid: str
    scopes: tuple[str, ...] = (DEFAULT_SCOPE,)


@dataclass
class Token:
    value: str
    client_id: str
    practiceid: str
    scope: str
    expires_at: float


class AthenaAuth:
    """Registered clients and the tokens issued to them, under the simulator's lock."""

    def __init__(self, lock: threading.RLock, now: Callable[[], float]) -> None:
        self._lock, self._now = lock, now
        self.clients: dict[str, Client] = {}
        self.tokens: dict[str, Token] = {}
        self._windows: dict[str, deque[float]] = {}
        self.requests = 0       # every request to the token endpoint
        self.issued = 0

    def add_client(self, client_id: str, secret: str, practiceid: str,
                   scopes: Iterable[str], *, known_practice: bool) -> None:
        if not client_id or not secret:
            raise InputError("client_id and secret are required", field="client_id")
        if not known_practice:
            raise InputError("unknown practice", field="practiceid")
        with self._lock:
            self.clients[client_id] = Client(client_id, secret, str(practiceid), tuple(scopes))

    def count_request(self) -> None:
        with self._lock:
            self.requests += 1

    def expire_all(self) -> int:
        """Make every issued token expired now; returns how many there were."""
        with self._lock:
            now = self._now()
            for tok in self.tokens.values():
                tok.expires_at = now - 1
            return len(self.tokens)

    def issue(self, request: Request, ttl_s: int, rate_per_min: int) -> tuple[Response, str | None]:
        """The token endpoint's answer and the client it authenticated (None if none)."""
        if request.method != "POST":
            return json_response({"error": "invalid_request",
                                  "error_description": "the token endpoint takes POST"}, 405,
                                 {"Allow": "POST"}), None
        auth = request.authorization
        unauthorized = {"WWW-Authenticate": 'Basic realm="athenahealth"'}
        if auth is None or auth.type != "basic" or not auth.username:
            return json_response({"error": "invalid_client",
                                  "error_description": "client authentication (HTTP Basic) is required"},
                                 401, unauthorized), None
        with self._lock:
            client = self.clients.get(auth.username)
            ok = client is not None and secrets.compare_digest(
                client.secret.encode(), (auth.password or "").encode())
        if not ok:
            return json_response({"error": "invalid_client",
                                  "error_description": "the client authentication was invalid"},
                                 401, unauthorized), None
        assert client is not None
        grant = request.form.get("grant_type")
        if not grant:
            return json_response({"error": "invalid_request",
                                  "error_description": "grant_type is required"}, 400), client.client_id
        if grant != "client_credentials":
            return json_response({"error": "unsupported_grant_type",
                                  "error_description": "only client_credentials is supported"},
                                 400), client.client_id
        requested = (request.form.get("scope") or "").split()
        if any(s not in client.scopes for s in requested):
            return json_response({"error": "invalid_scope",
                                  "error_description": "a requested scope is not registered for this "
                                                       "client"}, 400), client.client_id
        with self._lock:
            now = self._now()
            window = self._windows.setdefault(client.client_id, deque())
            while window and window[0] <= now - 60:
                window.popleft()
            if len(window) >= rate_per_min:
                wait = 60 - (now - window[0])
                return json_response({"error": "rate_limit_exceeded",
                                      "error_description": "too many token requests; cache the "
                                                           "token until it expires"},
                                     429, {**retry_after_header(max(1.0, wait)),
                                           "X-RateLimit-Limit": str(rate_per_min),
                                           "X-RateLimit-Remaining": "0"}), client.client_id
            window.append(now)
            value = secrets.token_urlsafe(24)
            scope = " ".join(requested or client.scopes)
            self.tokens[value] = Token(value, client.client_id, client.practiceid, scope,
                                        now + ttl_s)
            if len(self.tokens) > 10_000:  # bounded: forget the oldest
                self.tokens.pop(next(iter(self.tokens)))
            self.issued += 1
            remaining = rate_per_min - len(window)
        return json_response({"access_token": value, "token_type": "Bearer",
                              "expires_in": ttl_s, "scope": scope}, 200,
                             {"Cache-Control": "no-store", "Pragma": "no-cache",
                              "X-RateLimit-Limit": str(rate_per_min),
                              "X-RateLimit-Remaining": str(remaining)}), client.client_id

    def authenticate(self, request: Request, practiceid: str, known_practice: bool
                     ) -> Response | None:
        """None when the bearer token may call this practice's routes, else athena's answer."""
        header = request.headers.get("Authorization", "")
        if not header.lower().startswith("bearer ") or not header[7:].strip():
            return athena_error(401, "Developer Inactive",
                                 "No bearer token was sent in the Authorization header.",
                                 {"WWW-Authenticate": 'Bearer realm="athenahealth"'})
        with self._lock:
            token = self.tokens.get(header[7:].strip())
            now = self._now()
        if token is None or token.expires_at <= now:
            return athena_error(401, "Invalid Access Token",
                                 "The access token is invalid or has expired.",
                                 {"WWW-Authenticate": 'Bearer error="invalid_token"'})
        if not known_practice:
            return athena_error(404, "Invalid practice.", "The practice ID does not exist.")
        if token.practiceid != practiceid:
            return athena_error(401, "Incorrect permissions.", "Bad auth.")
        return None

