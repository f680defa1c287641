"""Reading org config files: YAML -> OrgConfig, with every problem located.

`validate_files(paths)` reports EVERY problem of every file, each a ConfigError carrying
the file, the dotted key path (`targets.fhir_docref.base_url`, list items as `[i]`) and the
1-based line of that key. Lines come from the YAML node tree (`yaml.compose`): a pydantic
error location is walked down the nodes; a missing key is reported on the line of the
mapping that should hold it.

Messages never carry a config value (a value may be a secret pasted in by mistake), and
YAML parser errors are reported by problem and line without the offending text.

Pipeline per file: read -> parse (nodes + data) -> merge the environment overlay ->
validate schema -> check mappings. The modules: yamlnodes.py (reading a file into its
line-numbered node tree, merging node trees, locating a key), loading.py (which files make
an org, validation and its located errors), configstore.py (the cached per-process store).
This module re-exports their public names, the import every caller uses.

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

from .configstore import ConfigStore, default_store, get_org, reset_default_store
from .loading import (DEFAULT_CONFIG_DIR, ENV_CONFIG_DIR, ENV_NAME, ENV_SELECT, EXAMPLE_ORGS,
                      current_env, env_for, is_overlay, load_layers, load_org_file, load_orgs,
                      mapping_errors, org_environment, org_files, overlay_files, overlay_path,
                      parse_layers, split_name, validate_files)
from .yamlnodes import MAX_BYTES, MAX_NODES, Loc, ParsedFile, locate, locate_origin, merge_nodes

__all__ = ["DEFAULT_CONFIG_DIR", "ENV_CONFIG_DIR", "ENV_NAME", "ENV_SELECT", "EXAMPLE_ORGS",
           "MAX_BYTES", "MAX_NODES", "ConfigStore", "Loc", "ParsedFile", "current_env",
           "default_store", "env_for", "get_org", "is_overlay", "load_layers", "load_org_file",
           "load_orgs", "locate", "locate_origin", "mapping_errors", "merge_nodes",
           "org_environment", "org_files", "overlay_files", "overlay_path", "parse_layers",
           "reset_default_store", "split_name", "validate_files"]
