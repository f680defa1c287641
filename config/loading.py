"""Loading org configs: which files make an org (`ORG.yaml` and its `ORG.ENV.yaml`
overlay), merging them (yamlnodes.merge_nodes), validating the schema and the mappings, and
turning every problem into a ConfigError with file, dotted key and line. The pipeline and
the overlay rules are described in config/loader.py."""
from __future__ import annotations

import os
import re
from pathlib import Path

import yaml
from pydantic import ValidationError

from chartbridge.config.schema import ORG_ID, OrgConfig, known_targets
from chartbridge.config.secrets import BASE_DIR
from chartbridge.core.errors import ConfigError

from .yamlnodes import ParsedFile, locate_origin, merge_nodes, parse_file

ENV_CONFIG_DIR = "CHARTBRIDGE_CONFIG_DIR"
ENV_SELECT = "CHARTBRIDGE_ENV"           # which overlay (ORG.<env>.yaml) applies; unset = none
ENV_NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,30}")
DEFAULT_CONFIG_DIR = "./config/orgs"
EXAMPLE_ORGS = Path(__file__).resolve().parent / "orgs"     # the example orgs, also in the wheel


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
        data = parse_file(Path(base)).data
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


# --- validation errors, located -------------------------------------------------------


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


def parse_layers(base: str | Path, overlay: str | Path | None = None) -> ParsedFile:
    """The base file, with `overlay` merged over it when given. Raises ConfigError."""
    parsed = parse_file(Path(base))
    if overlay is None:
        return parsed
    overlay = Path(overlay)
    org, env = split_name(overlay)
    if env is None or not ENV_NAME.fullmatch(env) or org != split_name(base)[0]:
        raise ConfigError("overlay file name must be <org>.<env>.yaml with env in lower-case "
                          "letters, digits and '-'", file=str(overlay), line=1)
    top = parse_file(overlay)
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
