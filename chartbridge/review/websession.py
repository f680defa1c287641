"""Server-side page sessions, sealed pre-sign-in cookies and CSRF tokens for the clinician
pages.

The browser holds only a random id in an httpOnly, SameSite=Lax cookie scoped to one org's
path; what the session knows (who signed in, the SMART launch's token) stays on the server,
in the engine's database (the org-scoped token table), under an HMAC of that id with the
app's secret key — a row read from the database cannot be replayed as a cookie. Any engine
process that shares the database and the secret key can serve the page. The stored JSON
is itself encrypted at rest (DbTokenCache seals every value).

Before anyone is signed in nothing is stored: what a sign-in or a SMART launch must remember
until its callback (state, PKCE verifier, nonce) travels in a `SealedCookie`, encrypted and
authenticated with a key derived from the app's secret key, and valid for minutes. A row is
written only after the callback's check passed (an authorization code the provider issued).
Cookies are `Secure` whenever the engine's public URL is https.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
from datetime import timedelta
from typing import Any

from cryptography.fernet import Fernet, InvalidToken
from flask import Response, current_app, request

from chartbridge.httperrors import public_is_https, public_origin

KEY_PREFIX = "web-session:"


class PageSessions:
    """One kind of page session (`kind` names the cookie: one for the Epic page, one for the
    review pages), stored through the engine's DbTokenCache."""

    def __init__(self, engine, *, kind: str, lifetime_s: int = 8 * 3600) -> None:
        self.engine, self.kind, self.lifetime = engine, kind, timedelta(seconds=lifetime_s)

    @property
    def cookie_name(self) -> str:
        return f"cb_{self.kind}"

    def _key(self, raw: str) -> str:
        secret = current_app.secret_key
        secret = secret.encode() if isinstance(secret, str) else secret
        mac = hmac.new(secret, raw.encode(), hashlib.sha256).hexdigest()
        return f"{KEY_PREFIX}{self.kind}:{mac}"

    def load(self, org: str) -> dict[str, Any] | None:
        raw = request.cookies.get(self.cookie_name)
        if not raw or len(raw) > 200:
            return None
        stored = self.engine.services.token_cache.get(org, self._key(raw))
        if stored is None:
            return None
        try:
            data = json.loads(stored)
        except ValueError:
            return None
        return data if isinstance(data, dict) and data.get("org") == org else None

    def save(self, org: str, data: dict[str, Any], response: Response, *,
             path: str, new_id: bool = False) -> None:
        """Store `data` under the request's session id (a fresh id when `new_id`, e.g. at
        sign-in, so an id planted before it cannot be ridden) and set the cookie."""
        raw = None if new_id else request.cookies.get(self.cookie_name)
        if not raw or len(raw) > 200:
            raw = secrets.token_urlsafe(32)
        data = dict(data, org=org)
        data.setdefault("csrf", secrets.token_urlsafe(32))
        expires = self.engine.clock.now() + self.lifetime
        self.engine.services.token_cache.put(org, self._key(raw), json.dumps(data), expires)
        response.set_cookie(self.cookie_name, raw, max_age=int(self.lifetime.total_seconds()),
                            path=path, httponly=True, samesite="Lax",
                            secure=public_is_https())

    def clear(self, org: str, response: Response, *, path: str) -> None:
        raw = request.cookies.get(self.cookie_name)
        if raw and len(raw) <= 200:
            self.engine.services.token_cache.invalidate(org, self._key(raw))
        response.delete_cookie(self.cookie_name, path=path)


def csrf_ok(data: dict[str, Any] | None) -> bool:
    """The form's token equals the session's (constant-time), and the request did not come
    from another origin (when the browser says where it came from)."""
    if not data or not data.get("csrf"):
        return False
    sent = request.form.get("csrf_token", "")
    if not secrets.compare_digest(sent.encode(), str(data["csrf"]).encode()):
        return False
    origin = request.headers.get("Origin")
    if origin and origin != "null" and origin.rstrip("/") != public_origin():
        return False
    return True


class SealedCookie:
    """Short-lived state kept by the browser, not the database: Fernet-encrypted (so PKCE
    verifiers and nonces are not readable) and authenticated (so it cannot be forged), with
    a lifetime checked on reading. Key: derived from the app's secret key."""

    def __init__(self, name: str, *, lifetime_s: int) -> None:
        self.name, self.lifetime = name, lifetime_s

    @staticmethod
    def _fernet() -> Fernet:
        secret = current_app.secret_key
        secret = secret.encode() if isinstance(secret, str) else secret
        digest = hashlib.sha256(b"chartbridge sealed cookie\x00" + secret).digest()
        return Fernet(base64.urlsafe_b64encode(digest))

    def save(self, data: dict[str, Any], response: Response, *, path: str) -> None:
        value = self._fernet().encrypt(json.dumps(data).encode()).decode()
        response.set_cookie(self.name, value, max_age=self.lifetime, path=path, httponly=True,
                            samesite="Lax", secure=public_is_https())

    def load(self) -> dict[str, Any] | None:
        raw = request.cookies.get(self.name)
        if not raw or len(raw) > 4096:
            return None
        try:
            data = json.loads(self._fernet().decrypt(raw.encode(), ttl=self.lifetime))
        except (InvalidToken, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def clear(self, response: Response, *, path: str) -> None:
        response.delete_cookie(self.name, path=path)


def security_headers(response: Response, nonce: str) -> Response:
    """No framing by others, no inline code but ours, no referrer leaking ids."""
    response.headers["Content-Security-Policy"] = (
        f"default-src 'self'; script-src 'nonce-{nonce}'; style-src 'nonce-{nonce}'; "
        "img-src 'self' data:; frame-ancestors 'none'; form-action 'self'; base-uri 'none'")
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    response.headers["Cache-Control"] = "no-store"
    return response
