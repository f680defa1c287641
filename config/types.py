"""Field types shared by the org schema and every adapter's config model.

Adapters import from here (and from `secrets`), never from `schema`/`loader`, so an
adapter's config module stays light and free of import cycles.
"""
from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit

from pydantic import (BaseModel, BeforeValidator, ConfigDict, Field, GetCoreSchemaHandler,
                      StringConstraints)
from pydantic_core import PydanticCustomError, core_schema

from chartbridge.config.secrets import BASE_DIR, SecretRef

__all__ = ["Settings", "Url", "Uri", "field_error", "FileRef", "SecretRef", "TimeoutS", "Name", "Id", "Scopes"]


class Settings(BaseModel):
    """Base of every config model: unknown keys are errors, instances are read-only."""

    model_config = ConfigDict(extra="forbid", frozen=True)


Name = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1)]


def _number_to_str(value: Any) -> Any:
    # YAML reads `practice_id: 195900` as an int; ids are strings everywhere else.
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return value


Id = Annotated[str, BeforeValidator(_number_to_str), StringConstraints(strip_whitespace=True,
                                                                        min_length=1)]

TimeoutS = Annotated[float, Field(gt=0, le=300)]
Scopes = Annotated[list[Name], Field(min_length=1)]


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _check_url(value: Any) -> str:
    if not isinstance(value, str):
        raise PydanticCustomError("url_type", "must be a URL string")
    value = value.strip()
    try:
        parts = urlsplit(value)
        host = parts.hostname or ""
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        raise PydanticCustomError("url_parsing", "not a valid URL") from None
    if parts.scheme not in ("https", "http") or not host:
        raise PydanticCustomError("url_scheme", "must be an absolute https:// URL")
    if parts.scheme == "http" and not _is_loopback(host):
        # clinical data and credentials never travel in clear text; plain http is for
        # local simulators only
        raise PydanticCustomError("url_scheme", "must use https (http is allowed only for 127.0.0.1/localhost)")
    if parts.username or parts.password:
        raise PydanticCustomError("url_userinfo", "credentials in a URL are not allowed; use a secret field")
    return value.rstrip("/") if parts.path not in ("", "/") else f"{parts.scheme}://{parts.netloc}"


# An http(s) URL kept as a plain string without a trailing slash, so `f"{url}/path"` works.
Url = Annotated[str, BeforeValidator(_check_url)]


def _check_uri(value: Any) -> str:
    if not isinstance(value, str) or not _URI.fullmatch(value.strip()):
        raise PydanticCustomError("uri", "must be an absolute URI (e.g. http://loinc.org or urn:oid:1.2.3)")
    return value.strip()


_URI = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:[^\s]+")

# An identifier URI (FHIR `system`): never fetched, so any absolute URI will do.
Uri = Annotated[str, BeforeValidator(_check_uri)]


class _FileRefMarker:
    """A path to a non-secret file (JWKS, CA bundle, model folder). Relative paths are
    taken from the config file's folder. Validation does not check that it exists."""

    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any, handler: GetCoreSchemaHandler):
        def validate(value: Any, info: core_schema.ValidationInfo) -> Path:
            if isinstance(value, Path):
                p = value
            elif isinstance(value, str) and value.strip():
                text = value.strip()
                if text.startswith("file:"):
                    text = text[len("file:"):]
                p = Path(text).expanduser()
            else:
                raise PydanticCustomError("file_ref", "must be a file path")
            base = info.context.get(BASE_DIR) if isinstance(info.context, dict) else None
            if not p.is_absolute() and base is not None:
                p = Path(base) / p
            return p

        return core_schema.with_info_plain_validator_function(
            validate, serialization=core_schema.plain_serializer_function_ser_schema(str),
            json_schema_input_schema=core_schema.str_schema())


FileRef = Annotated[Path, _FileRefMarker]


def field_error(field: str, message: str) -> PydanticCustomError:
    """An error a model validator raises about one of its own fields: the loader reports
    it at `<model path>.<field>` (pydantic would otherwise place it on the model)."""
    return PydanticCustomError("field_problem", message, {"field": field})
