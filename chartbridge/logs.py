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
"""
from __future__ import annotations

import json
import logging
import sys
import traceback

SAFE_FIELDS = ("correlation_id", "org_id", "key", "status", "attempt", "delay_s", "target",
               "event", "http_status", "error_class", "duration_ms", "reason")
OWN = "chartbridge"
# Chatty libraries: their INFO lines say nothing an operator needs (and SQLAlchemy's
# echo would print statements).
LIBRARY_LEVELS = {"sqlalchemy": logging.WARNING, "waitress": logging.INFO,
                  "dramatiq": logging.INFO, "pika": logging.WARNING, "httpx": logging.WARNING,
                  "httpcore": logging.WARNING, "faster_whisper": logging.WARNING}


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
        if record.exc_info and record.exc_info[1] is not None:
            out["exc_class"] = type(record.exc_info[1]).__name__
            out["exception"] = _chain(record.exc_info[1])
        elif record.exc_info and record.exc_info[0] is not None:
            out["exc_class"] = record.exc_info[0].__name__
        if record.stack_info:
            out["stack"] = "omitted"
        return json.dumps(out, default=str)


def configure_logging(level: int = logging.INFO, *, stream=None) -> logging.Handler:
    """One JSON handler on the root logger for every library; returns it."""
    handler = logging.StreamHandler(stream or sys.stderr)
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
