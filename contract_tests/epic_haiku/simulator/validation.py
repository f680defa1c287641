"""Request checks from the page: Epic's error answer (_CallError), required strings and
positive integers naming the field, JSON bodies, the DocumentationReady body, and the
identifier lists of an ambient session."""
from __future__ import annotations

import base64
import json
from datetime import datetime
from typing import Any

from flask import Request

from chartbridge.core.errors import InputError


class _CallError(Exception):
    """An Epic error answer (internal control flow inside a request handler only)."""

    def __init__(self, status: int, code: str, detail: str, **extra: Any) -> None:
        super().__init__(detail)
        self.status, self.code, self.detail, self.extra = status, code, detail, extra


class _OAuthError(_CallError):
    """An OAuth 2.0 error answer of the token endpoint (``error`` / ``error_description``)."""


def b64url_json(segment: str) -> dict[str, Any]:
    padded = segment + "=" * (-len(segment) % 4)
    value = json.loads(base64.urlsafe_b64decode(padded.encode("ascii")))
    if not isinstance(value, dict):
        raise ValueError("not an object")
    return value


def _canonical(body: Any) -> str:
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _require_str(body: dict[str, Any], name: str, prefix: str = "") -> str:
    value = body.get(name)
    if not isinstance(value, str) or not value.strip():
        raise _CallError(400, "InvalidBody", f"{prefix}{name} is required and must be a non-empty string",
                         Field=f"{prefix}{name}")
    return value


def _require_pos_int(body: dict[str, Any], name: str) -> int:
    value = body.get(name)
    if not _is_int(value) or value < 1:
        raise _CallError(400, "InvalidBody", f"{name} is required and must be an integer >= 1", Field=name)
    return value


def _ids(value: Any, name: str) -> list[dict[str, str]]:
    items = list(value or [])
    out: list[dict[str, str]] = []
    for i, item in enumerate(items):
        if isinstance(item, dict) and isinstance(item.get("ID"), str) and isinstance(item.get("Type"), str):
            out.append({"ID": item["ID"], "Type": item["Type"]})
        elif isinstance(item, (tuple, list)) and len(item) == 2 and all(isinstance(x, str) for x in item):
            out.append({"ID": item[0], "Type": item[1]})
        else:
            raise InputError(f"{name}[{i}] must be {{'ID': str, 'Type': str}} or (id, type)", field=f"{name}[{i}]")
    if not out:
        raise InputError(f"{name} needs at least one identifier", field=name)
    return out


def json_body(request: Request) -> dict[str, Any]:
    """The request's JSON object body, or Epic's 400."""
    raw = request.get_data(cache=True)
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise _CallError(400, "InvalidBody", "body is not valid JSON", Field="body") from None
    if not isinstance(body, dict):
        raise _CallError(400, "InvalidBody", "body must be a JSON object", Field="body")
    return body


def check_documentation(body: dict[str, Any]) -> tuple[str, int, list[str]]:
    """A DocumentationReady body's (SessionID, RecordingVersion, section codes) per the page."""
    sid = _require_str(body, "SessionID")
    version = _require_pos_int(body, "RecordingVersion")
    instant = _require_str(body, "GeneratedInstant")
    try:
        parsed = datetime.fromisoformat(instant)
    except ValueError:
        raise _CallError(400, "InvalidBody", "GeneratedInstant must be an ISO 8601 instant",
                         Field="GeneratedInstant") from None
    if parsed.tzinfo is None:
        raise _CallError(400, "InvalidBody", "GeneratedInstant must carry a UTC offset", Field="GeneratedInstant")
    sections = body.get("Sections")
    if not isinstance(sections, list) or not sections:
        raise _CallError(400, "InvalidBody", "Sections must be a non-empty list", Field="Sections")
    codes: list[str] = []
    for i, section in enumerate(sections):
        prefix = f"Sections[{i}]."
        if not isinstance(section, dict):
            raise _CallError(400, "InvalidBody", f"Sections[{i}] must be an object", Field=f"Sections[{i}]")
        code = _require_str(section, "SectionID", prefix)
        _require_str(section, "ContentType", prefix)
        if not isinstance(section.get("Text"), str):
            raise _CallError(400, "InvalidBody", f"{prefix}Text is required and must be a string",
                             Field=f"{prefix}Text")
        if code in codes:
            raise _CallError(400, "InvalidBody", f"{prefix}SectionID repeats an earlier section",
                             Field=f"{prefix}SectionID")
        codes.append(code)
    return sid, version, codes
