"""Section templates (Jinja2, sandboxed, plain text) with id + version.

A template is `<name>.j2` whose first line is `{# version: N #}`. Lookup order: the org's
`settings["template_dir"]` (if given) then mappings/templates/; the name is
`settings["template"]` if given, else the note type's LOINC code, else "default"."""
from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from jinja2 import StrictUndefined, TemplateError
from jinja2.sandbox import SandboxedEnvironment

from chartbridge.core.errors import ConfigError, PermanentError

VERSION_RE = re.compile(r"\A\s*\{#\s*version:\s*([\w.\-]+)\s*#\}")
NAME_RE = re.compile(r"\A[A-Za-z0-9][A-Za-z0-9_.\-]*\Z")


def packaged_dir() -> Path:
    return Path(str(resources.files("chartbridge.mappings") / "templates"))


@dataclass(frozen=True)
class SectionTemplate:
    id: str
    version: str
    source: str

    def render(self, **context) -> str:
        env = SandboxedEnvironment(undefined=StrictUndefined, autoescape=False,
                                   keep_trailing_newline=False)
        try:
            return env.from_string(self.source).render(**context).strip()
        except TemplateError as exc:
            raise PermanentError(f"note template {self.id!r} v{self.version} failed to "
                                 f"render: {type(exc).__name__}") from None


def load_template(settings: dict | None, note_type_code: str | None) -> SectionTemplate:
    settings = settings or {}
    dirs: list[Path] = []
    if settings.get("template_dir"):
        d = Path(settings["template_dir"])
        if not d.is_dir():
            raise ConfigError(f"template_dir does not exist: {d}", key="template_dir")
        dirs.append(d)
    dirs.append(packaged_dir())
    explicit = settings.get("template")
    if explicit is not None and (not isinstance(explicit, str) or not NAME_RE.match(explicit)):
        raise ConfigError("template must be a plain template name", key="template")
    if note_type_code and not NAME_RE.match(note_type_code):
        note_type_code = None                      # never a path
    names = [explicit] if explicit else [n for n in (note_type_code, "default") if n]
    for name in names:
        for d in dirs:
            path = d / f"{name}.j2"
            if path.is_file():
                source = path.read_text(encoding="utf-8")
                m = VERSION_RE.match(source)
                if not m:
                    raise ConfigError("template lacks a '{# version: N #}' first line",
                                      file=str(path), line=1)
                return SectionTemplate(id=name, version=m.group(1), source=source)
    raise ConfigError(f"no note template named {names[0]!r}", key="template")
