"""Bounded JSON: every inbound body is parsed here before any model or database sees it.

`load_json(raw, limits)` refuses, naming the field (never its value):
- a body over `max_bytes` (TooLarge, 413), nesting past `max_depth`, a list over
  `max_items` entries (TooLarge);
- a NUL character or a lone surrogate in any string or key (PostgreSQL text cannot hold
  either), a string over `max_string` characters, a key over 128 characters;
- `NaN`/`Infinity` (not JSON; PostgreSQL refuses them) and integers outside
  [-2^53, 2^53] (no database integer type or JSON reader keeps them exactly).

Columns have their own, smaller sizes: the vendor schemas bound those fields themselves.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from .errors import InputError, TooLarge

INT32_MAX = 2**31 - 1          # an INTEGER column (PostgreSQL int4)
JSON_INT_MAX = 2**53


@dataclass(frozen=True)
class JsonLimits:
    max_bytes: int = 64 * 1024
    max_depth: int = 16
    max_items: int = 200           # entries of any one list or object
    max_string: int = 4096         # characters of any one string value
    max_key: int = 128


DEFAULT = JsonLimits()


def _path(parts: tuple) -> str:
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "body"


def _refuse_constant(name: str):
    raise ValueError(f"{name} is not JSON")


def _bad_text(value: str) -> str | None:
    if "\x00" in value:
        return "must not contain a NUL character"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return "must be valid Unicode (no lone surrogates)"
    return None


def check_value(value: Any, limits: JsonLimits = DEFAULT, *, prefix: tuple = ()) -> None:
    """Walk an already-parsed JSON value (iteratively: no recursion to exhaust)."""
    stack: list[tuple[Any, tuple, int]] = [(value, prefix, 1)]
    while stack:
        item, where, depth = stack.pop()
        if isinstance(item, (dict, list)):
            if depth > limits.max_depth:
                raise TooLarge(f"{_path(where)} is nested deeper than {limits.max_depth} levels",
                               field=_path(where), limit=limits.max_depth)
            if len(item) > limits.max_items:
                raise TooLarge(f"{_path(where)} has more than {limits.max_items} entries",
                               field=_path(where), limit=limits.max_items)
            if isinstance(item, dict):
                for key, child in item.items():
                    if len(key) > limits.max_key or _bad_text(key):
                        raise InputError(f"{_path(where)} has an invalid field name",
                                         field=_path(where))
                    stack.append((child, where + (key,), depth + 1))
            else:
                stack.extend((child, where + (i,), depth + 1) for i, child in enumerate(item))
        elif isinstance(item, str):
            problem = _bad_text(item)
            if problem:
                raise InputError(f"{_path(where)} {problem}", field=_path(where))
            if len(item) > limits.max_string:
                raise TooLarge(f"{_path(where)} is longer than {limits.max_string} characters",
                               field=_path(where), limit=limits.max_string)
        elif isinstance(item, int) and not isinstance(item, bool):
            if not -JSON_INT_MAX <= item <= JSON_INT_MAX:
                raise InputError(f"{_path(where)} is out of range", field=_path(where))


def load_json(raw: bytes | str, limits: JsonLimits = DEFAULT) -> Any:
    """Parse and check one inbound JSON body. Raises InputError / TooLarge naming the field."""
    if len(raw) > limits.max_bytes:
        raise TooLarge(f"the body is larger than {limits.max_bytes} bytes", field="body",
                       limit=limits.max_bytes)
    try:
        value = json.loads(raw, parse_constant=_refuse_constant)
    except RecursionError:
        raise TooLarge(f"body is nested deeper than {limits.max_depth} levels", field="body",
                       limit=limits.max_depth) from None
    except (ValueError, UnicodeDecodeError):
        raise InputError("body is not valid JSON", field="body") from None
    check_value(value, limits)
    return value
