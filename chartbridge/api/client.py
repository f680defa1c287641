"""A capture client of the API, over HTTP (httpx): what the demo's non-Epic site uses and
what the README's curl walk-through does by hand. It signs its client assertion with its
own private key (private_key_jwt), fetches a token, and sends every POST with an
Idempotency-Key."""
from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field

import httpx


def new_client_key():
    """(private key, public JWKS) for a capture client."""
    from joserfc.jwk import ECKey

    key = ECKey.generate_key("P-256", private=True)
    key.ensure_kid()
    public = key.as_dict(private=False)
    public.update(alg="ES256", use="sig")
    return key, {"keys": [public]}


def client_assertion(key, client_id: str, token_url: str, *, ttl_s: int = 120) -> str:
    from joserfc import jwt

    now = int(time.time())
    return jwt.encode({"alg": "ES256", "kid": key.kid},
                      {"iss": client_id, "sub": client_id, "aud": token_url, "iat": now,
                       "exp": now + ttl_s, "jti": uuid.uuid4().hex}, key)


@dataclass
class CaptureClient:
    base_url: str                        # the engine, e.g. http://127.0.0.1:8080
    org: str
    client_id: str
    key: object
    scopes: str = "capture read approve"
    http: httpx.Client = field(default_factory=lambda: httpx.Client(timeout=30.0))
    _token: str | None = None
    _expires: float = 0.0

    @property
    def api(self) -> str:
        return f"{self.base_url}/orgs/{self.org}/api/v1"

    def token(self) -> str:
        if self._token is None or time.monotonic() > self._expires - 30:
            url = f"{self.api}/token"
            resp = self.http.post(url, data={
                "grant_type": "client_credentials", "scope": self.scopes,
                "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                "client_assertion": client_assertion(self.key, self.client_id, url)})
            resp.raise_for_status()
            body = resp.json()
            self._token, self._expires = body["access_token"], time.monotonic() + body["expires_in"]
        return self._token

    def headers(self, **extra) -> dict:
        return {"Authorization": f"Bearer {self.token()}", **extra}

    def post(self, path: str, body: dict, *, key: str | None = None, **headers) -> httpx.Response:
        return self.http.post(self.api + path, json=body, headers=self.headers(
            **{"Idempotency-Key": key or uuid.uuid4().hex}, **headers))

    def put_chunk(self, session_id: str, version: int, seq: int, audio: bytes,
                  content_type: str = "audio/wav") -> httpx.Response:
        return self.http.put(f"{self.api}/sessions/{session_id}/recordings/{version}/chunks/{seq}",
                             content=audio, headers=self.headers(**{"Content-Type": content_type}))

    def get(self, path: str) -> httpx.Response:
        return self.http.get(self.api + path, headers=self.headers())

    def wait(self, path: str, done, *, timeout: float, what: str) -> dict:
        """GET `path` until `done(body)`; a deadline, never a guess."""
        deadline = time.monotonic() + timeout
        while True:
            resp = self.get(path)
            if resp.status_code == 200 and done(resp.json()):
                return resp.json()
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out waiting for {what} ({resp.status_code})")
            time.sleep(0.1)
