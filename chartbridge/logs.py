"""Structured JSON logs, one configuration for every library in the process.

Only allow-listed fields are emitted: ids of the engine's own records, codes, counts and
error classes — never names, identifiers or transcript text. `configure_logging()` puts one
JSON handler on the root logger, so dramatiq's, waitress's and SQLAlchemy's records go
through the same filter as the engine's:

- the engine's own loggers (`chartbridge.*`) write PHI-free messages by rule, so their
  formatted message is kept;
- any other library's record keeps only its message *template* (`"Failed to process
  message %s with unhandled exception."`), never the arguments filled into it;
- an exception is written as its class and its stack frames (file, line, function), never
  its message: a failing INSERT's message holds the SQL and its bound parameters (note
  text). SQLAlchemy engines are also built with `hide_parameters=True`.

Every line carries a `correlation_id`: the one the record names (the session's), else the
one of the work in progress, held in a context variable — set per web request
(`install_request_context`: a well-formed inbound `X-Correlation-ID`, else a new one, and
the session's once an endpoint knows it), per worker job (`CorrelationMiddleware`: the id
of the code that enqueued it, carried in the message's options) and per CLI invocation.
Web, workers and the CLI all call `configure_logging()`.
"""
from __future__ import annotations

import contextvars
import json
import logging
import re
import sys
import time
import traceback
import uuid

SAFE_FIELDS = ("correlation_id", "org_id", "key", "status", "attempt", "delay_s", "target",
               "event", "http_status", "error_class", "duration_ms", "reason", "job", "queue")
OWN = "chartbridge"
# Chatty libraries: their INFO lines say nothing an operator needs (and SQLAlchemy's
# echo would print statements).
LIBRARY_LEVELS = {"sqlalchemy": logging.WARNING, "waitress": logging.INFO,
                  "dramatiq": logging.INFO, "pika": logging.WARNING, "httpx": logging.WARNING,
                  "httpcore": logging.WARNING, "faster_whisper": logging.WARNING}


_CORRELATION: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "chartbridge_correlation_id", default=None)
# What an inbound X-Correlation-ID may be: an opaque id (hex, uuid), never free text.
CORRELATION_SHAPE = re.compile(r"^[0-9A-Za-z-]{8,64}$")
CORRELATION_HEADER = "X-Correlation-ID"


def new_correlation_id() -> str:
    return uuid.uuid4().hex


def correlation_id() -> str | None:
    """The correlation id of the work in progress (None outside a request, job or command)."""
    return _CORRELATION.get()


def bind_correlation_id(value: str | None = None) -> str:
    """Make `value` (or a new id) the current correlation id; returns it."""
    value = value or new_correlation_id()
    _CORRELATION.set(value)
    return value


def valid_correlation_id(value: str | None) -> str | None:
    return value if value and CORRELATION_SHAPE.match(value) else None


def _frames(tb) -> list[str]:
    return [f"{f.filename.rsplit('/', 2)[-1] if '/' in f.filename else f.filename}:"
            f"{f.lineno} in {f.name}" for f in traceback.extract_tb(tb)][-12:]


def _chain(exc: BaseException | None) -> list[dict]:
    """Each exception of the chain as class + frames; messages are dropped."""
    out, seen = [], set()
    while exc is not None and id(exc) not in seen and len(out) < 5:
        seen.add(id(exc))
        out.append({"class": f"{type(exc).__module__}.{type(exc).__qualname__}",
                    "frames": _frames(exc.__traceback__)})
        exc = exc.__cause__ or exc.__context__
    return out


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        own = record.name == OWN or record.name.startswith(OWN + ".")
        if own:
            msg = record.getMessage()
        else:
            msg = record.msg if isinstance(record.msg, str) else type(record.msg).__name__
        out = {"ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S%z"), "level": record.levelname,
               "logger": record.name, "msg": msg}
        for name in SAFE_FIELDS:
            if hasattr(record, name):
                out[name] = getattr(record, name)
        if not out.get("correlation_id"):
            current = _CORRELATION.get()
            if current:
                out["correlation_id"] = current
        if record.exc_info and record.exc_info[1] is not None:
            out["exc_class"] = type(record.exc_info[1]).__name__
            out["exception"] = _chain(record.exc_info[1])
        elif record.exc_info and record.exc_info[0] is not None:
            out["exc_class"] = record.exc_info[0].__name__
        if record.stack_info:
            out["stack"] = "omitted"
        return json.dumps(out, default=str)


class _Stderr(logging.StreamHandler):
    """Writes to whatever sys.stderr is when a record is emitted (a CLI run under a test
    runner swaps it), never to a stream captured once and closed since."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:
        pass


def configure_logging(level: int = logging.INFO, *, stream=None) -> logging.Handler:
    """One JSON handler on the root logger for every library; returns it. Called by every
    process: `serve`, `worker`, `sweep` (INFO) and each other CLI command (WARNING)."""
    handler = logging.StreamHandler(stream) if stream is not None else _Stderr()
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        if isinstance(old.formatter, JsonFormatter):
            root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    ours = logging.getLogger(OWN)
    ours.handlers[:] = []
    ours.setLevel(level)
    ours.propagate = True
    for name, lib_level in LIBRARY_LEVELS.items():
        lib = logging.getLogger(name)
        lib.handlers[:] = []          # e.g. SQLAlchemy's echo handler: everything goes via root
        lib.setLevel(max(level, lib_level))
        lib.propagate = True
    logging.captureWarnings(True)
    return handler


# -- where the correlation id is set ---------------------------------------------------------
def install_request_context(app) -> None:
    """Per web request: a well-formed inbound X-Correlation-ID, else a new id; answered in
    the response's X-Correlation-ID (the session's, when the endpoint bound it)."""
    from flask import request

    @app.before_request
    def _bind():
        bind_correlation_id(valid_correlation_id(request.headers.get(CORRELATION_HEADER)))

    @app.after_request
    def _answer(response):
        current = correlation_id()
        if current:
            response.headers[CORRELATION_HEADER] = current
        return response

    @app.teardown_request
    def _unbind(_exc=None):
        _CORRELATION.set(None)


def correlation_middleware():
    """A dramatiq middleware: a message carries the correlation id of the code that
    enqueued it; its job runs with that id (a new one if it has none)."""
    from dramatiq.middleware import Middleware

    jobs_log = logging.getLogger("chartbridge.worker")
    started: contextvars.ContextVar[float | None] = contextvars.ContextVar("job_started",
                                                                           default=None)

    class CorrelationMiddleware(Middleware):
        def before_enqueue(self, broker, message, delay):
            current = correlation_id()
            if current and "correlation_id" not in message.options:
                message.options["correlation_id"] = current

        def before_process_message(self, broker, message):
            bind_correlation_id(valid_correlation_id(message.options.get("correlation_id")))
            started.set(time.perf_counter())

        def after_process_message(self, broker, message, *, result=None, exception=None,
                                  status=None):
            if correlation_id() is None:
                bind_correlation_id(valid_correlation_id(message.options.get("correlation_id")))
            t0 = started.get()
            extra = {"job": message.actor_name, "queue": message.queue_name,
                     "status": status or ("failed" if exception is not None else "done")}
            if t0 is not None:
                extra["duration_ms"] = round((time.perf_counter() - t0) * 1000, 1)
            if exception is not None:
                extra["error_class"] = type(exception).__name__
            jobs_log.info("job %s", extra["status"], extra=extra)
            started.set(None)
            _CORRELATION.set(None)

        def after_skip_message(self, broker, message):
            self.after_process_message(broker, message, status="skipped")

    return CorrelationMiddleware()
