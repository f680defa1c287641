"""Code tables: data files, not code.

Each `mappings/<name>.yaml` holds one table of a `kind` (`sections` or `note_types`); an org
picks its tables by name (`mappings.sections`, `mappings.note_types`) and may override
single entries (`mappings.overrides`). An entry's fields beyond its code and title/name are
the ones the registered adapters declare (`AdapterSpec.section_fields` /
`note_type_fields`); each adapter reads its own:

    section_table(org).get("51847-2").title
    note_type(org, "11506-3").txa2                   # "PR" (a field the MDM adapter declares)

A code the tables cannot map raises InputError naming the field (never the value's
context); `check_org(org)` lists every mapping gap of an org config (used by the loader,
so `chartbridge org validate` reports them with file and line).
"""
from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import yaml
from chartbridge.config.schema import NoteTypeOverride, SectionOverride
from chartbridge.config.types import Name, Settings
from chartbridge.core.errors import ChartbridgeError, ConfigError, InputError, NotFound
from pydantic import ValidationError, create_model

if TYPE_CHECKING:
    from chartbridge.config.schema import OrgConfig

TABLES_DIR = Path(__file__).resolve().parent
Kind = Literal["sections", "note_types"]


def _entry_model(name: str, key: str, override: type[Settings]) -> type[Settings]:
    """A table entry: its code and the override's fields (the generic ones and those the
    registered adapters declare for this kind of table)."""
    fields = {"code": (str, ...), key: (Name, ...)}
    fields.update({f: (info.annotation, None) for f, info in override.model_fields.items()
                   if f != key})
    model = create_model(name, __base__=Settings, **fields)
    model.__module__ = __name__
    return model


SectionEntry = _entry_model("SectionEntry", "title", SectionOverride)        # code: LOINC section
NoteTypeEntry = _entry_model("NoteTypeEntry", "name", NoteTypeOverride)      # code: LOINC note type


class _SectionFile(Settings):
    kind: Literal["sections"]
    version: int
    entries: dict[str, SectionOverride]


class _NoteTypeFile(Settings):
    kind: Literal["note_types"]
    version: int
    entries: dict[str, NoteTypeOverride]


class SectionTable:
    def __init__(self, name: str, entries: dict[str, SectionEntry]) -> None:
        self.name = name
        self.entries = entries

    @property
    def codes(self) -> list[str]:
        return list(self.entries)

    def __contains__(self, code: object) -> bool:
        return code in self.entries

    def get(self, code: str) -> SectionEntry:
        try:
            return self.entries[code]
        except KeyError:
            raise InputError(f"section code not in the {self.name!r} table", field="section") from None

    def title(self, code: str) -> str:
        return self.get(code).title


class NoteTypeTable:
    def __init__(self, name: str, entries: dict[str, NoteTypeEntry]) -> None:
        self.name = name
        self.entries = entries

    @property
    def codes(self) -> list[str]:
        return list(self.entries)

    def __contains__(self, code: object) -> bool:
        return code in self.entries

    def get(self, code: str) -> NoteTypeEntry:
        try:
            return self.entries[code]
        except KeyError:
            raise InputError(f"note type not in the {self.name!r} table", field="note_type") from None


def _entry_fields(override: Settings) -> dict:
    return override.model_dump(exclude_none=True)


@lru_cache(maxsize=64)
def load_table(name: str, kind: Kind, tables_dir: Path = TABLES_DIR) -> SectionTable | NoteTypeTable:
    """The named table from `<tables_dir>/<name>.yaml`; NotFound if there is none,
    ConfigError if the file is not a valid table of that kind."""
    path = tables_dir / f"{name}.yaml"
    if not path.is_file() or "/" in name or name.startswith("."):
        raise NotFound(f"no code table named {name!r}")
    where = str(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(f"code table unreadable ({type(exc).__name__})", file=where) from None
    model = _SectionFile if kind == "sections" else _NoteTypeFile
    try:
        parsed = model.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        key = ".".join(str(p) for p in err["loc"])
        raise ConfigError(f"not a {kind} table: {err['msg']}", file=where, key=key) from None
    if kind == "sections":
        entries = {}
        for code, raw in parsed.entries.items():
            fields = _entry_fields(raw)
            if "title" not in fields:
                raise ConfigError("title is required", file=where, key=f"entries.{code}.title")
            entries[code] = SectionEntry(code=code, **fields)
        return SectionTable(name, entries)
    nentries = {}
    for code, raw in parsed.entries.items():
        fields = _entry_fields(raw)
        if "name" not in fields:
            raise ConfigError("name is required", file=where, key=f"entries.{code}.name")
        nentries[code] = NoteTypeEntry(code=code, **fields)
    return NoteTypeTable(name, nentries)


def _apply(entries: dict, overrides: dict, cls: type) -> dict:
    merged = dict(entries)
    for code, override in overrides.items():
        if code in merged:
            merged[code] = cls(**{**merged[code].model_dump(), **_entry_fields(override)})
    return merged


def section_table(org: OrgConfig, tables_dir: Path = TABLES_DIR) -> SectionTable:
    """The org's sections table with its overrides applied."""
    base = load_table(org.mappings.sections, "sections", tables_dir)
    assert isinstance(base, SectionTable)
    return SectionTable(base.name, _apply(base.entries, org.mappings.overrides.sections, SectionEntry))


def note_type_table(org: OrgConfig, tables_dir: Path = TABLES_DIR) -> NoteTypeTable:
    """The org's note types table with its overrides applied."""
    base = load_table(org.mappings.note_types, "note_types", tables_dir)
    assert isinstance(base, NoteTypeTable)
    return NoteTypeTable(base.name, _apply(base.entries, org.mappings.overrides.note_types,
                                           NoteTypeEntry))


def note_type(org: OrgConfig, code: str | None = None, tables_dir: Path = TABLES_DIR) -> NoteTypeEntry:
    """The mapping of one note type (the org's default when `code` is None)."""
    return note_type_table(org, tables_dir).get(code or org.note_types.default)


Problem = tuple[tuple, str]      # (location in the org config, message)


def check_org(org: OrgConfig, tables_dir: Path = TABLES_DIR) -> list[Problem]:
    """Every way the org's sections, note types and targets are not covered by its tables."""
    problems: list[Problem] = []
    tables: dict[str, SectionTable | NoteTypeTable] = {}
    for kind in ("sections", "note_types"):
        name = getattr(org.mappings, kind)
        try:
            tables[kind] = load_table(name, kind, tables_dir)   # type: ignore[arg-type]
        except NotFound:
            known = sorted(p.stem for p in tables_dir.glob("*.yaml"))
            problems.append(((("mappings", kind)),
                             f"no code table named {name!r} (known: {', '.join(known) or 'none'})"))
        except ConfigError as exc:
            problems.append((("mappings", kind), f"code table {name!r} is invalid: {exc}"))
    if problems:
        return problems
    sections = section_table(org, tables_dir)
    types = note_type_table(org, tables_dir)

    for code in org.mappings.overrides.sections:
        if code not in sections:
            problems.append((("mappings", "overrides", "sections", code),
                             f"section not in the {sections.name!r} table"))
    for code in org.mappings.overrides.note_types:
        if code not in types:
            problems.append((("mappings", "overrides", "note_types", code),
                             f"note type not in the {types.name!r} table"))

    from chartbridge.adapters.registry import registry

    # each target's plugin says which fields of an entry it needs (AdapterSpec.mapping_needs)
    plugins = [(registry.get(name), cfg) for name, cfg in org.targets.items()]

    def needs(kind: str, entry) -> list[tuple[str, str]]:
        return [(what, spec.name) for spec, cfg in plugins for what in spec.needs(cfg, kind, entry)]

    for i, code in enumerate(org.allowed_sections):
        if code not in sections:
            problems.append((("allowed_sections", i), f"section not in the {sections.name!r} table"))
            continue
        for what, target in needs("sections", sections.get(code)):
            problems.append((("allowed_sections", i),
                             f"no {what} mapping for this section (needed by target {target}); "
                             "add it under mappings.overrides.sections"))
    seen: set[str] = set()
    if org.note_types.allowed:
        located = [(("note_types", "allowed", i), c) for i, c in enumerate(org.note_types.allowed)]
    else:
        located = [(("note_types", "default"), org.note_types.default)]
    for loc, code in located:
        if code in seen:
            continue
        seen.add(code)
        if code not in types:
            problems.append((loc, f"note type not in the {types.name!r} table"))
            continue
        for what, target in needs("note_types", types.get(code)):
            problems.append((loc, f"no {what} mapping for this note type (needed by target "
                                  f"{target}); add it under mappings.overrides.note_types"))
    return problems


def section_titles(org) -> Callable[[str], str] | None:
    """The org's section titles by LOINC code, or None when the org has no usable table
    (an adapter then takes titles from the draft)."""
    try:
        return section_table(org).title
    except (ChartbridgeError, AttributeError, TypeError):
        return None
