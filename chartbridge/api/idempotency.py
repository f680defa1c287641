"""The Idempotency-Key header on every POST of the API (IETF
draft-ietf-httpapi-idempotency-key-header): the same key and the same body answer the
stored response (with `Idempotent-Replayed: true`); the same key with another body is 422;
the first request with that key still being answered is 409; a POST without the header is
400. Keys are per org (table `api_idempotency`, ledger/idempotency.py), kept 24 h, and
the request's fingerprint includes who is asking (the client, the person): another
principal sending the same key and body is another request (422), never handed the first
one's stored answer.

Not stored (the claim is released, so a retry under the same key runs again): a 5xx (an
outage, e.g. the identity provider unreachable: 503), and a 401/403 (the credentials were
refused, so nothing changed: the retry with the right token must run). Every other answer
is stored.
"""
from __future__ import annotations

import functools
import hashlib
import re

import flask

from chartbridge.core.errors import ChartbridgeError, InputError
from chartbridge.ledger.idempotency import IdempotencyStore

HEADER = "Idempotency-Key"
KEY = re.compile(r"^[\x21-\x7e]{1,255}$")       # visible ASCII; quoted per the draft or not


class KeyReused(ChartbridgeError):
    code = "idempotency_key_reused"
    http_status = 422


NOT_STORED = (401, 403)            # refused credentials change nothing; 5xx are never stored


class KeyInFlight(ChartbridgeError):
    code = "idempotency_key_in_flight"
    http_status = 409


def _store(engine) -> IdempotencyStore:
    store = getattr(engine, "_api_idempotency", None)
    if store is None:
        store = IdempotencyStore(engine.db, engine.clock)
        engine._api_idempotency = store
    return store


def caller(principal, person=None) -> str:
    """Who asks, as part of the fingerprint: the client and the person (either may be
    absent; `person` overrides the principal's, e.g. the clinician of an approval), and the
    surface (a client token or a page session)."""
    person = person if person is not None else principal.person
    return "\x1f".join([principal.via, principal.client_id or "",
                         f"{person.system}|{person.value}" if person is not None else ""])


def fingerprint(method: str, path: str, who: str, body: bytes) -> str:
    """What makes two requests under one key the same request: method, path, caller, body."""
    return hashlib.sha256(b"\x00".join([method.encode(), path.encode(), who.encode(),
                                         body])).hexdigest()


def read_key() -> str:
    raw = flask.request.headers.get(HEADER)
    if raw is None:
        raise InputError(f"every POST needs an {HEADER} header (a unique value per "
                         "operation, e.g. a UUID)", field=HEADER)
    key = raw.strip()
    if len(key) >= 2 and key[0] == key[-1] == '"':          # the draft's sf-string form
        key = key[1:-1]
    if not KEY.fullmatch(key):
        raise InputError(f"the {HEADER} must be 1-255 visible ASCII characters", field=HEADER)
    return key


def idempotent(view=None, *, who=None):
    """Wrap a POST view. The view runs once per (org, key, caller, body); it returns
    (body, status). `who(engine, org)`, when given, runs before the key is claimed (so its
    refusal is never stored) and returns the person acting, part of the fingerprint."""
    if view is None:
        return functools.partial(idempotent, who=who)

    @functools.wraps(view)
    def wrapper(org: str, **kwargs):
        from chartbridge import httperrors

        engine = flask.current_app.extensions["chartbridge"]
        key = read_key()
        person = who(engine, org) if who is not None else None
        store = _store(engine)
        claim = store.begin(org, key, fingerprint(
            flask.request.method, flask.request.path, caller(flask.g.api_principal, person),
            flask.request.get_data(cache=True)))
        if claim.outcome == "mismatch":
            raise KeyReused(f"this {HEADER} was used for another request; use a new key",
                            field=HEADER)
        if claim.outcome == "in_flight":
            raise KeyInFlight(f"a request with this {HEADER} is still being answered; "
                              "retry later", field=HEADER)
        if claim.outcome == "replay":
            resp = flask.jsonify(claim.response)
            resp.status_code = claim.status or 200
            resp.headers["Idempotent-Replayed"] = "true"
            return resp
        try:
            body, status = view(org, **kwargs)
        except BaseException as exc:
            answer = httperrors.classify(exc)
            if answer.status >= 500:
                store.release(org, key, claim)
                raise
            body = {"error": answer.code, "detail": answer.detail, **answer.fields}
            if answer.status in NOT_STORED:
                store.release(org, key, claim)
            else:
                store.finish(org, key, claim, answer.status, body)
            resp = flask.jsonify(body)
            resp.status_code = answer.status
            resp.headers.update(answer.headers)
            return resp
        store.finish(org, key, claim, status, body)
        resp = flask.jsonify(body)
        resp.status_code = status
        return resp
    return wrapper
