"""Structured JSON logs. Only allow-listed fields are emitted: ids of the engine's own
records, codes, counts and error classes — never names, identifiers or transcript text."""
from __future__ import annotations

import json
import logging
import sys

SAFE_FIELDS = ("correlation_id", "org_id", "key", "status", "attempt", "delay_s", "target",
               "event", "http_status", "error_class", "duration_ms")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {"ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S%z"), "level": record.levelname,
               "logger": record.name, "msg": record.getMessage()}
        for name in SAFE_FIELDS:
            if hasattr(record, name):
                out[name] = getattr(record, name)
        if record.exc_info:
            out["exc_class"] = record.exc_info[0].__name__ if record.exc_info[0] else None
        return json.dumps(out, default=str)


def configure_logging(level: int = logging.INFO) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger("chartbridge")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False
