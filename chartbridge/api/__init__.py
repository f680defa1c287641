"""The capture API: /orgs/{org}/api/v1 (issue 16). routes.py declares the routes once
(`ROUTES`), openapi.py describes them, auth.py says who is calling, token.py issues client
tokens, idempotency.py replays POSTs under their Idempotency-Key, audio.py checks chunks."""
from __future__ import annotations


def make_blueprint(engine, jobs):
    from . import auth
    from .routes import make_blueprint as build
    from .token import bearer_authenticator

    if bearer_authenticator not in auth.AUTHENTICATORS:
        auth.AUTHENTICATORS.insert(0, bearer_authenticator)       # ours first, always
    return build(engine, jobs)
