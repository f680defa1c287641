"""The Flask app factory: thin HTTP over the engine. Every error is JSON with a 4xx/5xx
status chosen from the error hierarchy; a traceback never reaches a client."""
from __future__ import annotations

import logging
import os

from flask import Flask, jsonify

from chartbridge import httperrors
from chartbridge.bootstrap import Engine

log = logging.getLogger("chartbridge.web")

MAX_BODY_BYTES = 2 * 1024 * 1024     # any request; each surface has its own, smaller limits


def create_app(engine: Engine, *, jobs=None, public_url: str | None = None,
               trusted_proxies: int | None = None) -> Flask:
    app = Flask("chartbridge")
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES
    app.secret_key = _secret_key()
    app.extensions["chartbridge"] = engine
    app.extensions["chartbridge.jobs"] = jobs
    # -- hardening (issue 20): public URL and proxies -------------------------------------
    app.config["CHARTBRIDGE_PUBLIC_URL"] = (public_url
                                            or os.environ.get("CHARTBRIDGE_PUBLIC_URL") or None)
    proxies = trusted_proxies if trusted_proxies is not None else int(
        os.environ.get("CHARTBRIDGE_TRUSTED_PROXIES", "0") or 0)
    if proxies > 0:
        from werkzeug.middleware.proxy_fix import ProxyFix
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=proxies, x_proto=proxies,
                                x_host=proxies, x_port=proxies, x_prefix=proxies)

    @app.get("/healthz")
    def healthz():
        return jsonify(status="ok")

    @app.get("/readyz")
    def readyz():
        try:
            engine.db.ping()
        except Exception as exc:  # noqa: BLE001 - any database failure means not ready
            log.warning("readiness check failed: %s", type(exc).__name__)
            return jsonify(status="unavailable", database="unreachable"), 503
        return jsonify(status="ready", database=engine.db.engine.dialect.name)

    @app.get("/orgs/<org>/.well-known/jwks.json")
    def org_jwks(org: str):
        """The public half of the org's signing keys: what an Epic or SMART backend
        registration points at. Never a private member; unknown org -> 404."""
        from chartbridge.onboarding.keys import org_jwks as public_keys

        doc, problems = public_keys(engine.org(org))
        if problems:
            log.warning("jwks: %d signing key(s) unavailable", len(problems),
                        extra={"org_id": org})
        if problems and not doc["keys"]:
            return jsonify(error="keys_unavailable",
                           detail="the organization's signing keys cannot be read"), 503
        resp = jsonify(doc)
        resp.headers["Cache-Control"] = "public, max-age=300"
        return resp

    def api_error(answer: httperrors.Answer):
        resp = jsonify({"error": answer.code, "detail": answer.detail, **answer.fields})
        resp.status_code = answer.status
        resp.headers.update(answer.headers)
        return resp

    httperrors.install(app, api_error)
    # issue 17: the correlation id of every request's log lines; /metrics
    from chartbridge import metrics
    from chartbridge.logs import install_request_context
    install_request_context(app)
    metrics.install(app, engine, jobs)
    _register_adapter_endpoints(app, engine, jobs)
    return app


def _register_adapter_endpoints(app: Flask, engine: Engine, jobs) -> None:
    """Each registered adapter's inbound endpoints (its plugin's `endpoints`), then the
    clinicians' review pages and the operators' console."""
    from chartbridge.adapters.registry import registry
    from chartbridge.ops import make_blueprint as ops_blueprint
    from chartbridge.review import make_blueprint as review_blueprint

    for spec in registry.plugins():
        for blueprint in spec.blueprints(engine, jobs):
            app.register_blueprint(blueprint)
    app.register_blueprint(review_blueprint(engine, jobs))
    app.register_blueprint(ops_blueprint(engine, jobs))
    from chartbridge.api import make_blueprint as api_blueprint
    app.register_blueprint(api_blueprint(engine, jobs))       # the capture API (issue 16)
    from chartbridge.recorder import make_blueprint as recorder_blueprint
    app.register_blueprint(recorder_blueprint(engine, jobs))  # the SMART ambient recorder


def _secret_key() -> bytes:
    """Signs and keys the clinician pages' sessions: `CHARTBRIDGE_SECRET_KEY` holds an
    `env:NAME` or `file:PATH` reference; without it (the embedded default) a random key per
    process, so page sessions end when the process does."""
    import secrets

    from chartbridge.settings import load_settings

    ref = load_settings().secret_key
    if not ref:
        return secrets.token_bytes(32)
    from chartbridge.config.secrets import resolve
    value = resolve(ref)
    if len(value) < 32:
        from chartbridge.core.errors import ConfigError
        raise ConfigError("the secret key must be at least 32 characters",
                          key="CHARTBRIDGE_SECRET_KEY")
    return value.encode()
