"""Reading org config files: YAML -> OrgConfig, with every problem located.

`validate_files(paths)` reports EVERY problem of every file, each a ConfigError carrying
the file, the dotted key path (`targets.fhir_docref.base_url`, list items as `[i]`) and the
1-based line of that key. Lines come from the YAML node tree (`yaml.compose`): a pydantic
error location is walked down the nodes; a missing key is reported on the line of the
mapping that should hold it.

Messages never carry a config value (a value may be a secret pasted in by mistake), and
YAML parser errors are reported by problem and line without the offending text.

Pipeline per file: read -> parse (nodes + data) -> [merge overlays: a later issue; a
`ParsedFile` list is what it will take] -> validate schema -> check mappings.
"""
from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from chartbridge.config.schema import ORG_ID, OrgConfig, known_targets
from chartbridge.config.secrets import BASE_DIR
from chartbridge.core.errors import ConfigError, NotFound

ENV_CONFIG_DIR = "CHARTBRIDGE_CONFIG_DIR"
DEFAULT_CONFIG_DIR = "./config/orgs"
MAX_BYTES = 1_000_000          # an org config is a few KB; refuse anything absurd
MAX_NODES = 50_000             # guards against alias expansion ("billion laughs")

Loc = tuple[Any, ...]


@dataclass
class ParsedFile:
    path: Path
    data: Any
    root: yaml.Node


# --- parsing ----------------------------------------------------------------------------


def _parse(path: Path) -> ParsedFile:
    file = str(path)
    try:
        if path.stat().st_size > MAX_BYTES:
            raise ConfigError(f"file is larger than {MAX_BYTES} bytes", file=file)
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError("file not found", file=file) from None
    except IsADirectoryError:
        raise ConfigError("is a directory, not a config file", file=file) from None
    except OSError as exc:
        raise ConfigError(f"cannot read file ({exc.strerror or type(exc).__name__})", file=file) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError("not UTF-8 text", file=file) from None
    loader: yaml.SafeLoader | None = None
    try:
        loader = yaml.SafeLoader(text)     # its reader already refuses control characters
        root = loader.get_single_node()
        if root is None:
            raise ConfigError("file is empty; expected a mapping of settings", file=file, line=1)
        _check_nodes(root, file)
        data = loader.construct_document(root)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        # problem/context only: str(exc) would quote the offending line, maybe a secret
        what = "; ".join(p for p in (exc.context, exc.problem) if p) or "invalid YAML"
        raise ConfigError(f"invalid YAML: {what}", file=file,
                          line=mark.line + 1 if mark else None) from None
    except yaml.YAMLError as exc:          # ReaderError: control characters, binary data
        if isinstance(exc, yaml.reader.ReaderError):
            raise ConfigError("invalid YAML: control character not allowed", file=file,
                              line=text.count("\n", 0, exc.position) + 1) from None
        raise ConfigError(f"invalid YAML ({type(exc).__name__})", file=file) from None
    except RecursionError:
        raise ConfigError("invalid YAML: nested too deeply", file=file) from None
    finally:
        if loader is not None:
            loader.dispose()
    if not isinstance(root, yaml.MappingNode) or not isinstance(data, dict):
        raise ConfigError("expected a mapping of settings at the top level", file=file,
                          line=root.start_mark.line + 1)
    return ParsedFile(path=path, data=data, root=root)


def _check_nodes(root: yaml.Node, file: str) -> None:
    """Refuse duplicate keys (PyYAML silently keeps the last) and alias bombs."""
    count = 0
    stack = [root]
    while stack:
        node = stack.pop()
        count += 1
        if count > MAX_NODES:
            raise ConfigError(f"too many values (over {MAX_NODES}, aliases expanded)", file=file)
        if isinstance(node, yaml.MappingNode):
            seen: set[str] = set()
            for key, value in node.value:
                if isinstance(key, yaml.ScalarNode):
                    if key.value in seen:
                        raise ConfigError("duplicate key", file=file, key=str(key.value),
                                          line=key.start_mark.line + 1)
                    seen.add(key.value)
                stack.append(key)
                stack.append(value)
        elif isinstance(node, yaml.SequenceNode):
            stack.extend(node.value)


# --- locating pydantic errors in the YAML -----------------------------------------------


def _child(node: yaml.Node | None, part: Any) -> tuple[yaml.Node | None, yaml.Node | None]:
    """(key node, value node) of `part` inside `node`, or (None, None)."""
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            if isinstance(key, yaml.ScalarNode) and key.value == str(part):
                return key, value
    elif isinstance(node, yaml.SequenceNode) and isinstance(part, int):
        if 0 <= part < len(node.value):
            item = node.value[part]
            return item, item
    return None, None


def _format_key(parts: list[tuple[Any, bool]]) -> str:
    """`a.b[2].c`: list items as [i], mapping keys (even numeric ones) dotted."""
    out = ""
    for part, is_index in parts:
        out += f"[{part}]" if is_index else ("." if out else "") + str(part)
    return out


def locate(root: yaml.Node, loc: Loc, missing: bool = False) -> tuple[str, int]:
    """The dotted key and 1-based line for a pydantic location. Parts that are not in the
    YAML (pydantic's own segments, such as '[key]') are dropped; a missing key is shown at
    its parent's line."""
    node: yaml.Node | None = root
    line = root.start_mark.line + 1
    parts: list[tuple[Any, bool]] = []
    for i, part in enumerate(loc):
        is_index = isinstance(part, int) and not isinstance(node, yaml.MappingNode)
        if part == "[key]":
            continue
        key_node, value_node = _child(node, part)
        if key_node is None:
            if missing and i == len(loc) - 1:
                parts.append((part, is_index))
            elif isinstance(node, (yaml.MappingNode, yaml.SequenceNode)) and not (
                    isinstance(part, str) and part.startswith(("function-", "json-or-python"))):
                # a key pydantic names but the YAML lacks (shouldn't happen) - keep the name
                parts.append((part, is_index))
            continue
        parts.append((part, is_index))
        line = key_node.start_mark.line + 1
        node = value_node
    return _format_key(parts), line


def _message(err: dict) -> str:
    msg = err["msg"]
    for prefix in ("Value error, ", "Assertion failed, "):
        if msg.startswith(prefix):
            msg = msg[len(prefix):]
    return msg


def _errors_from_validation(parsed: ParsedFile, exc: ValidationError) -> list[ConfigError]:
    out: list[ConfigError] = []
    file = str(parsed.path)
    for err in exc.errors(include_url=False, include_input=False):
        loc = tuple(err["loc"])
        kind = err["type"]
        if kind == "field_problem":
            loc = loc + (err["ctx"]["field"],)
        msg = _message(err)
        missing = kind in ("missing", "field_problem")
        if kind == "missing":
            msg = "required setting is missing"
        elif kind == "extra_forbidden":
            if len(loc) == 2 and loc[0] == "targets":
                msg = f"unknown target (known: {', '.join(known_targets())})"
            else:
                msg = "unknown setting (not allowed here)"
        key, line = locate(parsed.root, loc, missing=missing)
        out.append(ConfigError(msg, file=file, key=key or None, line=line))
    return out


# --- validating -------------------------------------------------------------------------


def _validate(parsed: ParsedFile) -> tuple[OrgConfig | None, list[ConfigError]]:
    file = str(parsed.path)
    errors: list[ConfigError] = []
    stem = parsed.path.stem
    if not ORG_ID.fullmatch(stem):
        errors.append(ConfigError(
            "file name must be <org>.yaml with org in lower-case letters, digits and '-'",
            file=file, line=1))
    data = parsed.data
    org_value = data.get("org")
    if isinstance(org_value, str) and org_value != stem:
        key, line = locate(parsed.root, ("org",))
        errors.append(ConfigError(f"must equal the file name ({stem!r})", file=file,
                                  key=key, line=line))
    try:
        org = OrgConfig.model_validate(data, context={BASE_DIR: parsed.path.parent.resolve()})
    except ValidationError as exc:
        return None, errors + _errors_from_validation(parsed, exc)
    from chartbridge.mappings import check_org

    for loc, message in check_org(org):
        key, line = locate(parsed.root, loc)
        errors.append(ConfigError(message, file=file, key=key, line=line))
    return (None if errors else org), errors


def _load(path: Path) -> tuple[OrgConfig | None, list[ConfigError]]:
    try:
        parsed = _parse(path)
    except ConfigError as exc:
        return None, [exc]
    return _validate(parsed)


def validate_files(paths: list[str | Path]) -> tuple[list[OrgConfig], list[ConfigError]]:
    """Validate every file; return the good configs and every problem found."""
    configs: list[OrgConfig] = []
    errors: list[ConfigError] = []
    seen: dict[str, str] = {}
    for p in paths:
        path = Path(p)
        org, errs = _load(path)
        errors.extend(errs)
        if org is None:
            continue
        if org.org in seen:
            errors.append(ConfigError(f"org id already defined in {seen[org.org]}",
                                      file=str(path), key="org", line=None))
            continue
        seen[org.org] = str(path)
        configs.append(org)
    return configs, errors


def load_org_file(path: str | Path) -> OrgConfig:
    """One org config; raises the first ConfigError if it has any problem."""
    org, errors = _load(Path(path))
    if errors or org is None:
        raise errors[0]
    return org


def org_files(directory: str | Path) -> list[Path]:
    return sorted(Path(directory).glob("*.yaml"))


def load_orgs(directory: str | Path) -> dict[str, OrgConfig]:
    """Every org in a folder, by id; raises the first ConfigError if any file is bad
    (a partly loaded set of orgs is not something to run on)."""
    configs, errors = validate_files(org_files(directory))
    if errors:
        raise errors[0]
    return {c.org: c for c in configs}


# --- per-process store ------------------------------------------------------------------


class ConfigStore:
    """Org configs by id from one folder, cached per process and re-read when a file's
    modification time or size changes."""

    def __init__(self, directory: str | Path | None = None) -> None:
        self.directory = Path(directory or os.environ.get(ENV_CONFIG_DIR) or DEFAULT_CONFIG_DIR)
        self._cache: dict[str, tuple[tuple[int, int], OrgConfig]] = {}
        self._lock = threading.Lock()

    def get(self, org_id: str) -> OrgConfig:
        if not isinstance(org_id, str) or not ORG_ID.fullmatch(org_id) or len(org_id) > 63:
            raise NotFound("unknown org")
        path = self.directory / f"{org_id}.yaml"
        try:
            st = path.stat()
        except OSError:
            with self._lock:
                self._cache.pop(org_id, None)
            raise NotFound("unknown org") from None
        stamp = (st.st_mtime_ns, st.st_size)
        with self._lock:
            hit = self._cache.get(org_id)
            if hit and hit[0] == stamp:
                return hit[1]
        org = load_org_file(path)        # a broken file raises: never serve a stale copy
        with self._lock:
            self._cache[org_id] = (stamp, org)
        return org

    def org_ids(self) -> list[str]:
        return [p.stem for p in org_files(self.directory)]


_default_store: ConfigStore | None = None
_default_lock = threading.Lock()


def default_store() -> ConfigStore:
    """The process-wide store for CHARTBRIDGE_CONFIG_DIR (read on first use)."""
    global _default_store
    with _default_lock:
        if _default_store is None:
            _default_store = ConfigStore()
        return _default_store


def reset_default_store() -> None:
    """Forget the process-wide store (tests that change CHARTBRIDGE_CONFIG_DIR)."""
    global _default_store
    with _default_lock:
        _default_store = None


def get_org(org_id: str) -> OrgConfig:
    return default_store().get(org_id)
