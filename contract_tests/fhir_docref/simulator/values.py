"""Small FHIR value helpers: instants, HTTP dates, date-search ranges, base64, references
and token matching."""
from __future__ import annotations

import base64
import binascii
import re
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, Iterable, Mapping

ID_RE = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")
INSTANT_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$")
DATE_PARAM_RE = re.compile(r"^(eq|ne|gt|lt|ge|le)?(\d{4}(-\d{2}(-\d{2}(T\d{2}:\d{2}(:\d{2}(\.\d+)?)?"
                           r"(Z|[+-]\d{2}:\d{2})?)?)?)?)$")
TYPE_NAME_RE = re.compile(r"^[A-Z][A-Za-z]+$")

# ---------------------------------------------------------------- small FHIR helpers

def now_instant(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="milliseconds").replace(
        "+00:00", "Z")


def http_date(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%a, %d %b %Y %H:%M:%S GMT")


def parse_instant(value: Any) -> datetime | None:
    if not isinstance(value, str) or not INSTANT_RE.match(value):
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def date_range(value: str) -> tuple[datetime, datetime] | None:
    """The [start, end) a FHIR date search value covers (precision-aware, UTC if no zone)."""
    try:
        if len(value) == 4:
            start = datetime(int(value), 1, 1, tzinfo=timezone.utc)
            return start, start.replace(year=start.year + 1)
        if len(value) == 7:
            y, m = int(value[:4]), int(value[5:7])
            start = datetime(y, m, 1, tzinfo=timezone.utc)
            return start, (start.replace(year=y + 1, month=1) if m == 12 else start.replace(month=m + 1))
        if len(value) == 10:
            start = datetime.fromisoformat(value).replace(tzinfo=timezone.utc)
            return start, start + timedelta(days=1)
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=timezone.utc)
        clock_part = re.split(r"[Z+-]", value[11:])[0]
        step = timedelta(minutes=1) if clock_part.count(":") == 1 else timedelta(seconds=1)
        return moment, moment + step
    except ValueError:
        return None


def is_b64(value: Any) -> bool:
    if not isinstance(value, str) or not value:
        return False
    compact = re.sub(r"\s+", "", value)
    if len(compact) % 4:
        return False
    try:
        base64.b64decode(compact, validate=True)
    except (binascii.Error, ValueError):
        return False
    return True


def walk_references(node: Any, fn: Callable[[str], str | None]) -> None:
    """Call fn on every Reference.reference string; replace it when fn returns a value."""
    if isinstance(node, dict):
        for key, value in list(node.items()):
            if key == "reference" and isinstance(value, str):
                new = fn(value)
                if new is not None:
                    node[key] = new
            else:
                walk_references(value, fn)
    elif isinstance(node, list):
        for item in node:
            walk_references(item, fn)


def token_match(codings: Iterable[Mapping[str, Any]], value: str) -> bool:
    if "|" in value:
        system, code = value.split("|", 1)
    else:
        system, code = None, value
    for coding in codings:
        if not isinstance(coding, Mapping):
            continue
        if system is not None:
            if system == "" and coding.get("system"):
                continue
            if system and coding.get("system") != system:
                continue
        if code == "" or coding.get("code", coding.get("value")) == code:
            return True
    return False
