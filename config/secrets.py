"""Secrets only by reference.

A secret field in an org config holds `env:NAME` (an environment variable) or `file:PATH`
(a file's content, trailing newline stripped; a relative PATH is taken from the folder of
the config file that names it). Anything else is refused as an inline secret.

Validating a config never reads a secret: `SecretRef` only checks the shape and remembers
the folder. `resolve(ref)` reads the value when an adapter actually needs it (and `org
check` later), and its errors name the reference, never the value.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from pydantic import GetCoreSchemaHandler
from pydantic_core import PydanticCustomError, core_schema

from chartbridge.core.errors import ConfigError

INLINE_SECRET = "inline secret not allowed; use env:NAME or file:PATH"
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

# Validation context key: the folder relative `file:` paths resolve against. The loader
# passes the config file's folder; without it, the current directory at resolve time.
BASE_DIR = "base_dir"


class SecretRef:
    """A reference to a secret: `env:NAME` or `file:PATH`. `str()` gives the reference
    as written (safe to log); the value is only ever returned by `resolve()`."""

    __slots__ = ("ref", "scheme", "target", "base_dir")

    def __init__(self, ref: str, base_dir: str | Path | None = None) -> None:
        scheme, sep, target = ref.partition(":")
        target = target.strip()
        if not sep or scheme not in ("env", "file") or not target:
            raise ValueError(INLINE_SECRET)
        if scheme == "env" and not _ENV_NAME.fullmatch(target):
            raise ValueError("env: secret reference needs a variable name ([A-Za-z_][A-Za-z0-9_]*)")
        self.ref = f"{scheme}:{target}"
        self.scheme = scheme
        self.target = target
        self.base_dir = Path(base_dir) if base_dir is not None else None

    @property
    def path(self) -> Path | None:
        """For a `file:` reference, the absolute path it points at."""
        if self.scheme != "file":
            return None
        p = Path(self.target).expanduser()
        if not p.is_absolute() and self.base_dir is not None:
            p = self.base_dir / p
        return p

    def resolve(self) -> str:
        return resolve(self)

    def __str__(self) -> str:
        return self.ref

    def __repr__(self) -> str:
        return f"SecretRef({self.ref!r})"

    def __eq__(self, other: object) -> bool:
        if isinstance(other, SecretRef):
            return self.ref == other.ref and self.path == other.path
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self.ref)

    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any, handler: GetCoreSchemaHandler):
        def validate(value: Any, info: core_schema.ValidationInfo) -> SecretRef:
            if isinstance(value, SecretRef):
                return value
            if not isinstance(value, str):
                # never echo the value: it may be the secret itself
                raise PydanticCustomError("inline_secret", INLINE_SECRET)
            base = (info.context or {}).get(BASE_DIR) if isinstance(info.context, dict) else None
            try:
                return cls(value.strip(), base)
            except ValueError as exc:
                raise PydanticCustomError("inline_secret", str(exc)) from None

        return core_schema.with_info_plain_validator_function(
            validate,
            serialization=core_schema.plain_serializer_function_ser_schema(str),
            json_schema_input_schema=core_schema.str_schema(pattern=r"^(env|file):.+$"),
        )


def resolve(ref: SecretRef | str, base_dir: str | Path | None = None) -> str:
    """The secret's value. Raises ConfigError naming the reference (never the value) when
    the variable is unset or empty, or the file is missing or unreadable."""
    if not isinstance(ref, SecretRef):
        try:
            ref = SecretRef(ref, base_dir)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
    if ref.scheme == "env":
        value = os.environ.get(ref.target)
        if not value:
            raise ConfigError(f"secret {ref.ref}: environment variable is not set")
        return value
    path = ref.path
    assert path is not None
    try:
        value = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"secret {ref.ref}: file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"secret {ref.ref}: file not readable ({type(exc).__name__})") from None
    value = value.rstrip("\r\n")
    if not value:
        raise ConfigError(f"secret {ref.ref}: file is empty")
    return value
