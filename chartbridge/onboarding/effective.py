"""The effective org config (base + environment overlay + schema defaults), each value with
the file and line it came from.

Values are the validated model's JSON form: secret fields serialize to their reference
(`env:NAME` / `file:PATH`), never a resolved value — nothing here reads a secret.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from chartbridge.config.loader import ParsedFile, load_layers, overlay_path
from chartbridge.config.schema import OrgConfig
from chartbridge.core.errors import ConfigError, NotFound


@dataclass(frozen=True)
class Row:
    key: str                  # dotted path, list items as [i]
    value: Any                # JSON-ready; secrets as their reference
    origin: str               # "file:line" or "default"


@dataclass
class Effective:
    org: OrgConfig
    parsed: ParsedFile
    env: str | None

    @property
    def files(self) -> list[str]:
        return [str(self.parsed.path)] + ([str(self.parsed.overlay)] if self.parsed.overlay else [])


def load_effective(config_dir: str | Path, org_id: str, env: str | None, *,
                   check_mappings: bool = True) -> tuple[Effective | None, list[ConfigError]]:
    """The org's layered config, or every problem found. An env without an overlay file
    is the base as is."""
    base = Path(config_dir) / f"{org_id}.yaml"
    if not base.is_file():
        raise NotFound(f"no org {org_id!r} in {config_dir} (expected {base.name})")
    overlay = overlay_path(base, env) if env else None
    if overlay is not None and not overlay.exists():
        overlay = None
    org, errors, parsed = load_layers(base, overlay, check_mappings=check_mappings)
    if org is None or parsed is None:
        return None, errors
    return Effective(org=org, parsed=parsed, env=env), errors


def _origin(node: yaml.Node | None) -> str:
    mark = getattr(node, "start_mark", None)
    return f"{mark.name}:{mark.line + 1}" if mark is not None else "default"


def _child(node: yaml.Node | None, key: Any) -> tuple[yaml.Node | None, yaml.Node | None]:
    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            if isinstance(k, yaml.ScalarNode) and k.value == str(key):
                return k, v
    return None, None


def rows(eff: Effective) -> list[Row]:
    """One row per leaf of the effective config. Lists are one value (a list is replaced
    as a whole by an overlay, so it has one origin)."""
    data = eff.org.model_dump(mode="json")
    out: list[Row] = []

    def walk(value: Any, node: yaml.Node | None, key_node: yaml.Node | None, path: str) -> None:
        if isinstance(value, dict) and value:
            for k, v in value.items():
                kn, vn = _child(node, k)
                walk(v, vn, kn, f"{path}.{k}" if path else str(k))
            return
        origin = _origin(key_node) if key_node is not None else "default"
        out.append(Row(path, value, origin))

    walk(data, eff.parsed.root, None, "")
    return out


def render_rows(items: list[Row], origin: bool) -> str:
    width = max((len(f"{r.key} = {json.dumps(r.value)}") for r in items), default=0)
    lines = []
    for r in items:
        text = f"{r.key} = {json.dumps(r.value)}"
        lines.append(f"{text.ljust(width)}   # {r.origin}" if origin else text)
    return "\n".join(lines)


def render_yaml(eff: Effective) -> str:
    return yaml.safe_dump(eff.org.model_dump(mode="json"), sort_keys=False)
