"""Reading org config files: YAML -> OrgConfig, with every problem located.

`validate_files(paths)` reports EVERY problem of every file, each a ConfigError carrying
the file, the dotted key path (`targets.fhir_docref.base_url`, list items as `[i]`) and the
1-based line of that key. Lines come from the YAML node tree (`yaml.compose`): a pydantic
error location is walked down the nodes; a missing key is reported on the line of the
mapping that should hold it.

Messages never carry a config value (a value may be a secret pasted in by mistake), and
YAML parser errors are reported by problem and line without the offending text.

Pipeline per file: read -> parse (nodes + data) -> merge the environment overlay ->
validate schema -> check mappings.

Layered config (per environment): `ORG.yaml` is the base; `ORG.ENV.yaml` beside it (ENV =
`sandbox`, `production`, ... lower-case letters, digits, '-') is deep-merged over it when that
environment is selected (`CHARTBRIDGE_ENV`, or `--env` on the CLI). Merge rules: mappings
merge key by key, recursively; a list or scalar in the overlay replaces the base's; an
explicit `null` in the overlay removes the key (e.g. `jwks_url: null` to switch to
`jwks_file`). The merge happens on the YAML node tree, and every node's mark carries the
file it came from, so each error (and `org show --origin`) names the file and line that
supplied the value. A selected environment without an overlay file means "the base as is".
A file whose name has a dot in the stem is an overlay, never an org.
"""
from __future__ import annotations

import os
import re
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
ENV_SELECT = "CHARTBRIDGE_ENV"           # which overlay (ORG.<env>.yaml) applies; unset = none
ENV_NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,30}")
DEFAULT_CONFIG_DIR = "./config/orgs"
EXAMPLE_ORGS = Path(__file__).resolve().parent / "orgs"     # the example orgs, also in the wheel
MAX_BYTES = 1_000_000          # an org config is a few KB; refuse anything absurd
MAX_NODES = 50_000             # guards against alias expansion ("billion laughs")

Loc = tuple[Any, ...]


@dataclass
class ParsedFile:
    path: Path                       # the base file (its stem is the org id)
    data: Any
    root: yaml.Node                  # merged node tree; each mark's `name` is its file
    overlay: Path | None = None      # the environment overlay merged in, if any


def split_name(path: str | Path) -> tuple[str, str | None]:
    """(org, env) from a config file name: `a.yaml` -> (a, None), `a.sandbox.yaml` ->
    (a, 'sandbox')."""
    stem = Path(path).stem
    org, dot, env = stem.partition(".")
    return org, (env if dot else None)


def is_overlay(path: str | Path) -> bool:
    return split_name(path)[1] is not None


def overlay_path(base: str | Path, env: str) -> Path:
    base = Path(base)
    return base.with_name(f"{split_name(base)[0]}.{env}.yaml")


def current_env(env: str | None = None) -> str | None:
    """The selected environment: the argument, else $CHARTBRIDGE_ENV, else None."""
    value = env if env is not None else (os.environ.get(ENV_SELECT) or None)
    if value is not None and not ENV_NAME.fullmatch(value):
        raise ConfigError(f"environment name must be lower-case letters, digits and '-' "
                          f"(from --env or {ENV_SELECT})")
    return value


def org_environment(base: str | Path) -> str | None:
    """The overlay an org's base file selects for itself (its `environment:` key), if any.
    A malformed value is left to the schema to report."""
    try:
        data = _parse(Path(base)).data
    except ConfigError:
        return None
    value = data.get("environment")
    return value if isinstance(value, str) and ENV_NAME.fullmatch(value) else None


def env_for(base: str | Path, explicit: str | None = None) -> str | None:
    """The overlay that applies to one org: `explicit` (--env), else the org file's own
    `environment:`, else $CHARTBRIDGE_ENV, else none."""
    if explicit is not None:
        return current_env(explicit)
    return org_environment(base) or current_env(None)


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
        loader.name = file                 # every node's mark now names this file
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
    key, line, _ = locate_origin(root, loc, missing)
    return key, line


def locate_origin(root: yaml.Node, loc: Loc, missing: bool = False) -> tuple[str, int, str]:
    """`locate`, plus the file that supplied that line (base or overlay)."""
    node: yaml.Node | None = root
    line = root.start_mark.line + 1
    file = root.start_mark.name
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
        file = key_node.start_mark.name
        node = value_node
    return _format_key(parts), line, file


def _message(err: dict) -> str:
    msg = err["msg"]
    for prefix in ("Value error, ", "Assertion failed, "):
        if msg.startswith(prefix):
            msg = msg[len(prefix):]
    return msg


def _errors_from_validation(parsed: ParsedFile, exc: ValidationError) -> list[ConfigError]:
    out: list[ConfigError] = []
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
        key, line, file = locate_origin(parsed.root, loc, missing=missing)
        out.append(ConfigError(msg, file=file, key=key or None, line=line))
    return out


# --- overlays ---------------------------------------------------------------------------

_NULL = "tag:yaml.org,2002:null"


def merge_nodes(base: yaml.Node, over: yaml.Node) -> yaml.Node:
    """`over` deep-merged onto `base` (node trees; neither is changed). Mappings merge key by
    key; anything else in `over` replaces; a null in `over` removes the key."""
    if not (isinstance(base, yaml.MappingNode) and isinstance(over, yaml.MappingNode)):
        return over
    pairs = list(base.value)
    index = {k.value: i for i, (k, _) in enumerate(pairs) if isinstance(k, yaml.ScalarNode)}
    removed: set[int] = set()
    for key, value in over.value:
        name = key.value if isinstance(key, yaml.ScalarNode) else None
        i = index.get(name)
        if isinstance(value, yaml.ScalarNode) and value.tag == _NULL:
            if i is not None:
                removed.add(i)
            continue
        if i is None:
            index[name] = len(pairs)
            pairs.append((key, value))
        else:
            removed.discard(i)
            pairs[i] = (key, merge_nodes(pairs[i][1], value))
    kept = [p for i, p in enumerate(pairs) if i not in removed]
    return yaml.MappingNode(base.tag, kept, base.start_mark, base.end_mark,
                            flow_style=base.flow_style)


def parse_layers(base: str | Path, overlay: str | Path | None = None) -> ParsedFile:
    """The base file, with `overlay` merged over it when given. Raises ConfigError."""
    parsed = _parse(Path(base))
    if overlay is None:
        return parsed
    overlay = Path(overlay)
    org, env = split_name(overlay)
    if env is None or not ENV_NAME.fullmatch(env) or org != split_name(base)[0]:
        raise ConfigError("overlay file name must be <org>.<env>.yaml with env in lower-case "
                          "letters, digits and '-'", file=str(overlay), line=1)
    top = _parse(overlay)
    if isinstance(top.data, dict) and "environment" in top.data:
        key, line, where = locate_origin(top.root, ("environment",))
        raise ConfigError("the environment is chosen in the base file (ORG.yaml), not in an "
                          "overlay", file=where, key=key, line=line)
    root = merge_nodes(parsed.root, top.root)
    constructor = yaml.constructor.SafeConstructor()
    data = constructor.construct_document(root)
    return ParsedFile(path=parsed.path, data=data, root=root, overlay=overlay)


# --- validating -------------------------------------------------------------------------


def _validate(parsed: ParsedFile, check_mappings: bool = True
              ) -> tuple[OrgConfig | None, list[ConfigError]]:
    file = str(parsed.path)
    errors: list[ConfigError] = []
    stem = parsed.path.stem
    if "." in stem:
        errors.append(ConfigError(
            "an overlay file (<org>.<env>.yaml) is not an org; validate it with its base "
            "(chartbridge org validate --env ENV)", file=file, line=1))
        return None, errors
    if not ORG_ID.fullmatch(stem):
        errors.append(ConfigError(
            "file name must be <org>.yaml with org in lower-case letters, digits and '-'",
            file=file, line=1))
    data = parsed.data
    org_value = data.get("org")
    if isinstance(org_value, str) and org_value != stem:
        key, line, where = locate_origin(parsed.root, ("org",))
        errors.append(ConfigError(f"must equal the file name ({stem!r})", file=where,
                                  key=key, line=line))
    try:
        org = OrgConfig.model_validate(data, context={BASE_DIR: parsed.path.parent.resolve()})
    except ValidationError as exc:
        return None, errors + _errors_from_validation(parsed, exc)
    if check_mappings:
        errors.extend(mapping_errors(org, parsed))
    return (None if errors else org), errors


def mapping_errors(org: OrgConfig, parsed: ParsedFile) -> list[ConfigError]:
    """chartbridge.mappings.check_org's problems, located in the (layered) files."""
    from chartbridge.mappings import check_org

    out = []
    for loc, message in check_org(org):
        key, line, where = locate_origin(parsed.root, loc)
        out.append(ConfigError(message, file=where, key=key, line=line))
    return out


def load_layers(base: str | Path, overlay: str | Path | None = None, *,
                check_mappings: bool = True
                ) -> tuple[OrgConfig | None, list[ConfigError], ParsedFile | None]:
    """Parse + merge + validate one org (base and optional overlay): (config or None,
    every problem, the parsed tree for provenance or None if it did not parse)."""
    try:
        parsed = parse_layers(base, overlay)
    except ConfigError as exc:
        return None, [exc], None
    org, errors = _validate(parsed, check_mappings)
    return org, errors, parsed


def _load(path: Path, overlay: Path | None = None) -> tuple[OrgConfig | None, list[ConfigError]]:
    org, errors, _ = load_layers(path, overlay)
    return org, errors


def _layers_for(path: Path, env: str | None) -> tuple[Path, Path | None]:
    """(base, overlay) for a file named on the command line: an overlay file is validated
    over its base; a base file with the `env` overlay when one exists."""
    org, file_env = split_name(path)
    if file_env is not None:
        return path.with_name(f"{org}.yaml"), path
    if env is not None:
        over = overlay_path(path, env)
        return path, (over if over.exists() else None)
    return path, None


def validate_files(paths: list[str | Path], env: str | None = None
                   ) -> tuple[list[OrgConfig], list[ConfigError]]:
    """Validate every file; return the good configs and every problem found. An overlay
    file (`ORG.ENV.yaml`) is validated merged over its base `ORG.yaml`; with `env`, each base
    file is validated with its `ORG.<env>.yaml` overlay when there is one."""
    configs: list[OrgConfig] = []
    errors: list[ConfigError] = []
    seen: dict[tuple[str, str | None], str] = {}
    for p in paths:
        base, overlay = _layers_for(Path(p), env)
        org, errs = _load(base, overlay)
        errors.extend(errs)
        if org is None:
            continue
        layer = (org.org, split_name(overlay)[1] if overlay else None)
        if layer in seen:
            errors.append(ConfigError(f"org id already defined in {seen[layer]}",
                                      file=str(overlay or base), key="org", line=None))
            continue
        seen[layer] = str(overlay or base)
        configs.append(org)
    return configs, errors


def load_org_file(path: str | Path, env: str | None = None) -> OrgConfig:
    """One org config (with its `env` overlay when given and present); raises the first
    ConfigError if it has any problem."""
    base, overlay = _layers_for(Path(path), env)
    org, errors = _load(base, overlay)
    if errors or org is None:
        raise errors[0]
    return org


def org_files(directory: str | Path) -> list[Path]:
    """The base org files of a folder (`ORG.yaml`); overlays (`ORG.ENV.yaml`) are not orgs."""
    return sorted(p for p in Path(directory).glob("*.yaml") if not is_overlay(p))


def overlay_files(directory: str | Path, org_id: str | None = None) -> list[Path]:
    """Every overlay file of a folder (or of one org)."""
    pattern = f"{org_id}.*.yaml" if org_id else "*.*.yaml"
    return sorted(p for p in Path(directory).glob(pattern) if is_overlay(p))


def load_orgs(directory: str | Path, env: str | None = None) -> dict[str, OrgConfig]:
    """Every org in a folder, by id (with the `env` overlays); raises the first ConfigError
    if any file is bad (a partly loaded set of orgs is not something to run on)."""
    configs, errors = validate_files(org_files(directory), env)
    if errors:
        raise errors[0]
    return {c.org: c for c in configs}


# --- per-process store ------------------------------------------------------------------


class ConfigStore:
    """Org configs by id from one folder, each with its environment's overlay (`env` for
    every org when given, else the org file's own `environment:`, else $CHARTBRIDGE_ENV),
    cached per process and re-read when the base's or the overlay's modification time or
    size changes (or the overlay appears or goes)."""

    def __init__(self, directory: str | Path | None = None, env: str | None = None) -> None:
        self.directory = Path(directory or os.environ.get(ENV_CONFIG_DIR) or DEFAULT_CONFIG_DIR)
        self.env = current_env(env)                  # the default for orgs that name none
        self._forced = env is not None
        self._cache: dict[str, tuple[tuple, OrgConfig]] = {}
        self._envs: dict[str, tuple[tuple, str | None]] = {}
        self._lock = threading.Lock()

    def env_of(self, org_id: str, path: Path, base_stamp: tuple) -> str | None:
        """The overlay name for one org (the base file is re-read only when it changes)."""
        if self._forced:
            return self.env
        with self._lock:
            hit = self._envs.get(org_id)
        if hit is None or hit[0] != base_stamp:
            hit = (base_stamp, org_environment(path))
            with self._lock:
                self._envs[org_id] = hit
        return hit[1] or self.env

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
        env = self.env_of(org_id, path, (st.st_mtime_ns, st.st_size))
        overlay = overlay_path(path, env) if env else None
        try:
            ost = overlay.stat() if overlay is not None else None
        except FileNotFoundError:
            ost, overlay = None, None
        stamp = (st.st_mtime_ns, st.st_size,
                 (ost.st_mtime_ns, ost.st_size) if ost is not None else None)
        with self._lock:
            hit = self._cache.get(org_id)
            if hit and hit[0] == stamp:
                return hit[1]
        org, errors = _load(path, overlay)   # a broken file raises: never serve a stale copy
        if errors or org is None:
            raise errors[0]
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
