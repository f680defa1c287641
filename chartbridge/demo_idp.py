"""The demo's identity provider: a minimal OpenID provider on loopback, standing in for a
site's own (`sign_in.oidc` of the demo's non-Epic org). It serves discovery and its JWKS,
signs ID tokens for the demo's clinicians (`id_token`: what a capture client hands the API's
approval as X-Clinician-Token), and answers the review page's sign-in (authorization code
with PKCE) by signing in `reviewer` at once. For the demo and tests only: nobody logs in.
"""
from __future__ import annotations

import base64
import hashlib
import threading
import time
import uuid

CLIENT_ID = "chartbridge-demo"


class DemoIdP:
    def __init__(self, *, reviewer: str = "DEMO-DR-2", reviewer_name: str = "Demo Reviewer",
                 role: str = "physician") -> None:
        from flask import Flask, jsonify, redirect, request
        from joserfc.jwk import RSAKey
        from werkzeug.serving import WSGIRequestHandler, make_server

        class Quiet(WSGIRequestHandler):
            def log_request(self, *args, **kwargs):      # the demo's output stays readable
                pass

        self.key = RSAKey.generate_key(2048, private=True)
        self.key.ensure_kid()
        self.reviewer = (reviewer, reviewer_name, role)
        self._codes: dict[str, dict] = {}
        app = Flask("demo-idp")

        @app.get("/.well-known/openid-configuration")
        def configuration():
            return jsonify(issuer=self.issuer, authorization_endpoint=self.issuer + "/authorize",
                           token_endpoint=self.issuer + "/token", jwks_uri=self.issuer + "/jwks",
                           id_token_signing_alg_values_supported=["RS256"])

        @app.get("/jwks")
        def jwks():
            return jsonify(keys=[self.key.as_dict(private=False)])

        @app.get("/authorize")
        def authorize():
            a = request.args
            code = uuid.uuid4().hex
            self._codes[code] = dict(a)
            return redirect(f"{a['redirect_uri']}?code={code}&state={a.get('state', '')}")

        @app.post("/token")
        def token():
            f = request.form
            req = self._codes.pop(f.get("code", ""), None)
            verifier = f.get("code_verifier", "").encode()
            challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier).digest()).rstrip(b"=")
            if req is None or challenge.decode() != req.get("code_challenge"):
                return jsonify(error="invalid_grant"), 400
            sub, name, role = self.reviewer
            return jsonify(access_token=uuid.uuid4().hex, token_type="Bearer", expires_in=300,
                           id_token=self.id_token(sub, name, role, nonce=req.get("nonce"),
                                                  audience=req.get("client_id", CLIENT_ID)))

        self._server = make_server("127.0.0.1", 0, app, threaded=True, request_handler=Quiet)
        self.issuer = f"http://127.0.0.1:{self._server.server_port}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True,
                                        name="demo-idp")

    def start(self) -> "DemoIdP":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()

    def sign_in_block(self) -> dict:
        """The org file's `sign_in` block pointing at this provider."""
        return {"oidc": {"issuer": self.issuer, "client_id": CLIENT_ID, "role_claim": "role"}}

    def id_token(self, sub: str, name: str, role: str, *, nonce: str | None = None,
                 audience: str = CLIENT_ID, ttl_s: int = 300, **extra) -> str:
        from joserfc import jwt

        now = int(time.time())
        claims = {"iss": self.issuer, "sub": sub, "aud": audience, "iat": now,
                  "exp": now + ttl_s, "name": name, "role": role, **extra}
        if nonce:
            claims["nonce"] = nonce
        return jwt.encode({"alg": "RS256", "kid": self.key.kid}, claims, self.key)
