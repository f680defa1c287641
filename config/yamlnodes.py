"""YAML nodes: reading one config file into its node tree (`yaml.compose`) with every
problem located by file and 1-based line, merging an overlay's nodes over a base's, and
walking a pydantic error location down the nodes to the key and line it names.

Messages never carry a config value (a value may be a secret pasted in by mistake), and
YAML parser errors are reported by problem and line without the offending text.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from chartbridge.core.errors import ConfigError

MAX_BYTES = 1_000_000          # an org config is a few KB; refuse anything absurd
MAX_NODES = 50_000             # guards against alias expansion ("billion laughs")

Loc = tuple[Any, ...]


@dataclass
class ParsedFile:
    path: Path                       # the base file (its stem is the org id)
    data: Any
    root: yaml.Node                  # merged node tree; each mark's `name` is its file
    overlay: Path | None = None      # the environment overlay merged in, if any


def parse_file(path: Path) -> ParsedFile:
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
