"""The Idempotency-Key header on every POST of the API (IETF
draft-ietf-httpapi-idempotency-key-header): the same key and the same body answer the
stored response (with `Idempotent-Replayed: true`); the same key with another body is 422;
the first request with that key still being answered is 409; a POST without the header is
400. Keys are per org (table `api_idempotency`, ledger/idempotency.py), kept 24 h.

A 5xx is not stored (the claim is released, so a retry under the same key runs again);
every other answer is.
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


class KeyInFlight(ChartbridgeError):
    code = "idempotency_key_in_flight"
    http_status = 409


def _store(engine) -> IdempotencyStore:
    store = getattr(engine, "_api_idempotency", None)
    if store is None:
        store = IdempotencyStore(engine.db, engine.clock)
        engine._api_idempotency = store
    return store


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


def idempotent(view):
    """Wrap a POST view. The view runs once per (org, key); it returns (body, status)."""
    @functools.wraps(view)
    def wrapper(org: str, **kwargs):
        from chartbridge import httperrors

        engine = flask.current_app.extensions["chartbridge"]
        key = read_key()
        fingerprint = hashlib.sha256(b"\x00".join([
            flask.request.method.encode(), flask.request.path.encode(),
            flask.request.get_data(cache=True)])).hexdigest()
        store = _store(engine)
        claim = store.begin(org, key, fingerprint)
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
                store.release(org, key)
                raise
            body = {"error": answer.code, "detail": answer.detail, **answer.fields}
            store.finish(org, key, answer.status, body)
            resp = flask.jsonify(body)
            resp.status_code = answer.status
            resp.headers.update(answer.headers)
            return resp
        store.finish(org, key, status, body)
        resp = flask.jsonify(body)
        resp.status_code = status
        return resp
    return wrapper
