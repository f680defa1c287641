"""What every HTTP surface shares: path ids checked before any view, every failure turned
into an answer in the surface's own shape, and external URLs built from the configured
public base URL (never from the request's Host).

Surfaces register a renderer for their paths (`register_error_shape`): Epic's routes answer
`{"Error","Detail"}`, the pages answer an HTML page, everything else the API's
`{"error","detail"}`. The status is chosen here, once:

- ChartbridgeError: its own 4xx; TransientError (or any 503 error) -> 503 with Retry-After;
- werkzeug's HTTPException (404, 405, 413 ...): its code;
- the database unreachable (SQLAlchemy OperationalError, InterfaceError, pool timeout) ->
  503 with Retry-After: nothing was stored, the caller should deliver again;
- anything else -> 500 (a bug: logged with its class, never its message).
"""
from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from flask import Flask, current_app, request, url_for
from werkzeug.exceptions import HTTPException

from chartbridge.core.errors import ChartbridgeError, InputError, NotFound, TransientError

log = logging.getLogger("chartbridge.web")

RETRY_AFTER_S = 5
ORG_ID = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")
PATH_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
DEFAULT_PUBLIC_URL = "http://localhost"

_SHAPES = "chartbridge.error_shapes"


@dataclass(frozen=True)
class Answer:
    status: int
    code: str
    detail: str                          # PHI-free
    headers: dict = field(default_factory=dict)
    fields: dict = field(default_factory=dict)   # e.g. {"field": "PatientIDs"}

    @property
    def field(self) -> str | None:
        return self.fields.get("field")


Renderer = Callable[[Answer], object]


def classify(exc: BaseException) -> Answer:
    """The answer for any exception: status, code, PHI-free detail, extra headers."""
    from sqlalchemy import exc as sa

    if isinstance(exc, ChartbridgeError):
        extra = {k: v for k, v in exc.fields.items() if v is not None}
        if 400 <= exc.http_status < 500:
            return Answer(exc.http_status, exc.code, exc.message, {}, extra)
        if isinstance(exc, TransientError) or exc.http_status == 503:
            retry = getattr(exc, "retry_after", None) or getattr(exc, "retry_after_s", None)
            return Answer(503, exc.code, exc.message,
                          {"Retry-After": str(int(retry or RETRY_AFTER_S))})
        log.error("engine error answered 500", extra={"error_class": type(exc).__name__})
        return Answer(500, exc.code, exc.message)
    if isinstance(exc, HTTPException):
        code = (exc.name or "error").lower().replace(" ", "_")
        detail = {413: "the request body is too large"}.get(exc.code or 0, exc.description or "")
        return Answer(exc.code or 500, code, detail)
    if isinstance(exc, (sa.OperationalError, sa.InterfaceError, sa.TimeoutError,
                        sa.DisconnectionError)):
        log.warning("database unavailable", extra={"error_class": type(exc).__name__})
        return Answer(503, "unavailable", "the engine's database cannot be reached; try again "
                      "later", {"Retry-After": str(RETRY_AFTER_S)})
    log.error("unexpected error", exc_info=exc, extra={"error_class": type(exc).__name__})
    return Answer(500, "internal_error",
                  "the engine hit an unexpected error; nothing stored was lost")


def register_error_shape(bp, renderer: Renderer, *, paths: str | None = None) -> None:
    """Answer every failure on `bp`'s views (and, with `paths`, on any URL matching that
    regex, e.g. a 405 that matched no view) through `renderer`."""
    def handle(exc: Exception):
        return renderer(classify(exc))
    bp.register_error_handler(Exception, handle)
    if paths is not None:
        bp.record_once(lambda state: state.app.extensions.setdefault(_SHAPES, []).append(
            (re.compile(paths), renderer)))


def install(app: Flask, api_renderer: Renderer) -> None:
    """App-wide: path ids first, then the shape chosen by URL for errors no view handled."""
    app.extensions.setdefault(_SHAPES, [])

    @app.before_request
    def _check_path_ids():
        for name, value in (request.view_args or {}).items():
            if not isinstance(value, str):
                continue
            if name == "org":
                if not ORG_ID.fullmatch(value):
                    raise NotFound("no such organization")
            elif not PATH_ID.fullmatch(value):
                raise NotFound(f"no such {name.replace('_', ' ')}")
        for name, value in request.args.items(multi=True):
            _check_text(name, value)
        if request.mimetype in ("application/x-www-form-urlencoded", "multipart/form-data"):
            for name, value in request.form.items(multi=True):
                _check_text(name, value)

    def by_path(exc: Exception):
        answer = classify(exc)
        for pattern, renderer in app.extensions[_SHAPES]:
            if pattern.match(request.path):
                return renderer(answer)
        return api_renderer(answer)

    app.register_error_handler(Exception, by_path)


def _check_text(name: str, value: str) -> None:
    field = name if PATH_ID.fullmatch(name or "x") else "parameter"
    if "\x00" in value or "\x00" in name:
        raise InputError(f"{field} must not contain a NUL character", field=field)
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise InputError(f"{field} must be valid Unicode", field=field) from None


# -- external URLs -------------------------------------------------------------------------
def public_base() -> str:
    """The engine's configured public base URL (`CHARTBRIDGE_PUBLIC_URL` / `serve
    --public-url`), without a trailing slash."""
    return (current_app.config.get("CHARTBRIDGE_PUBLIC_URL") or DEFAULT_PUBLIC_URL).rstrip("/")


def public_url(path: str) -> str:
    return public_base() + path


def external_url_for(endpoint: str, **values) -> str:
    """url_for(..., _external=True), but on the public base URL instead of the Host header."""
    return public_url(url_for(endpoint, **values))


def public_is_https() -> bool:
    return urlsplit(public_base()).scheme == "https"


def public_origin() -> str:
    parts = urlsplit(public_base())
    return f"{parts.scheme}://{parts.netloc}"
