"""EHR adapters by name: one plugin object per vendor.

Each adapter package exposes `SPEC = AdapterSpec(...)` (alias `Plugin`) in its `__init__`:
everything the engine, the CLI, onboarding and the mappings need to know about that vendor
(config model, adapter factory, inbound endpoints, go-live checks, `org init` template,
mapping needs, simulator, sandbox, contract suite and its environment, capabilities). No
module outside `adapters/<vendor>/` and `contract_tests/<vendor>/` names a vendor: they ask
this registry. Every plugin, the engine's own included, is found through the `chartbridge.adapters`
entry-point group (pyproject.toml declares the built-in ones; each spec's `order` is its place in `org
init` files and listings); a vendor package installed beside the engine registers the same way.
Registering a second adapter under a taken name raises, as dramatiq does for actors.

Pieces that need heavy or test-only imports (checks, endpoints, the simulator, the sandbox)
are given as "module:attribute" references and imported on first use (`load_ref`), so
reading the registry needs neither httpx nor contract_tests.
"""
from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any

from pydantic import BaseModel

from chartbridge.core.errors import ChartbridgeError, ConfigError

ENTRY_POINT_GROUP = "chartbridge.adapters"

# a callable, or "module:attribute" naming one (imported on first use)
Ref = Callable[..., Any] | str


def load_ref(ref: Ref) -> Any:
    """The object a plugin reference names ("pkg.module:attr"), or `ref` itself."""
    if not isinstance(ref, str):
        return ref
    module, _, attr = ref.partition(":")
    obj: Any = importlib.import_module(module)
    for part in filter(None, attr.split(".")):
        obj = getattr(obj, part)
    return obj


@dataclass(frozen=True)
class Capabilities:
    """What the vendor's EHR does, as the engine needs to know it."""

    # Sessions this plugin opens hand their drafts back to its EHR for review there (no
    # approval here): the version's draft is written as `handoff_kind`, a paused
    # recording's notice as `notice_kind` (both part of the write's key).
    hands_off_drafts: bool = False
    handoff_kind: str = ""
    notice_kind: str = ""


@dataclass(frozen=True)
class SimulatorOption:
    """One extra `chartbridge simulate NAME` option, passed to `serve(**{name: value})`."""

    name: str                         # the keyword of serve(); the option is --name-with-dashes
    help: str = ""


@dataclass(frozen=True)
class Simulator:
    """A standalone vendor simulator for `chartbridge simulate CLI_NAME`."""

    module: str                       # importable; has serve(host=, port=, **options)
    default_port: int
    cli_name: str
    summary: str
    options: tuple[SimulatorOption, ...] = ()


@dataclass(frozen=True)
class AdapterSpec:
    name: str
    config_model: type[BaseModel]
    # factory(org_config, target_config, services) -> EhrAdapter; `services` carries the
    # shared engine pieces an adapter may need (clock, token store, http client factory).
    factory: Callable[..., Any] | None = None
    needs_approval: bool = True        # False: drafts are reviewed in the EHR (a handoff)
    description: str = ""
    resource_kind: str = "document"    # what one write creates at the EHR (part of the key)
    order: int = 100                   # place in `org init` files and listings (built-ins 10..40)
    capabilities: Capabilities = field(default_factory=Capabilities)
    # endpoints(engine, jobs) -> iterable of Flask blueprints the EHR calls (or None)
    endpoints: Ref | None = None
    # checks(org, target_cfg, http, clock) -> iterable of onboarding.checks.Check; read-only
    checks: Ref | None = None
    # template(org_id, env_prefix) -> the `targets.<name>` block `org init` writes (YAML text,
    # two-space indented, valid as written)
    template: Callable[[str, str], str] | None = None
    mapping_note: str = ""             # which code-table fields this target uses (org init)
    # fields this target adds to each code-table entry (mappings/*.yaml and the org's
    # mappings.overrides): name -> (type, default), as pydantic.create_model takes them
    section_fields: Mapping[str, tuple[Any, Any]] = field(default_factory=dict)
    note_type_fields: Mapping[str, tuple[Any, Any]] = field(default_factory=dict)
    # mapping_needs(target_cfg, kind, entry) -> names of the fields `entry` (a sections or
    # note_types table entry; kind "sections" | "note_types") lacks for this target
    mapping_needs: Callable[[Any, str, Any], list[str]] | None = None
    simulator: Simulator | None = None
    # sandbox(sandbox, secrets, org, target_cfg): start/register the org on its simulator
    sandbox: Ref | None = None
    suite: str | None = None           # importable package holding the contract suite
    # suite_env(target_cfg) -> (environment for the suite's process, note for the operator)
    suite_env: Callable[[Any], tuple[dict[str, str], str | None]] | None = None
    # CHARTBRIDGE_* variables only this plugin's contract suite reads: name -> meaning
    # (chartbridge/settings.py documents them by asking the registry)
    suite_variables: Mapping[str, str] = field(default_factory=dict)

    def go_live_checks(self, org: Any, cfg: Any, http: Any, clock: Any) -> Iterable[Any] | None:
        return None if self.checks is None else load_ref(self.checks)(org, cfg, http, clock)

    def blueprints(self, engine: Any, jobs: Any) -> list[Any]:
        return [] if self.endpoints is None else list(load_ref(self.endpoints)(engine, jobs))

    def needs(self, cfg: Any, kind: str, entry: Any) -> list[str]:
        return [] if self.mapping_needs is None else list(self.mapping_needs(cfg, kind, entry))

    def environment(self, cfg: Any) -> tuple[dict[str, str], str | None]:
        if self.suite_env is None:
            return {}, f"no settings mapping for {self.name}"
        return self.suite_env(cfg)


Plugin = AdapterSpec


class DuplicateAdapter(ChartbridgeError):
    code = "duplicate_adapter"


class UnknownAdapter(ChartbridgeError):
    code = "unknown_adapter"
    http_status = 404


class Registry:
    def __init__(self) -> None:
        self._specs: dict[str, AdapterSpec] = {}
        self._loaded = False

    def register(self, spec: AdapterSpec) -> AdapterSpec:
        if spec.name in self._specs and self._specs[spec.name] is not spec:
            raise DuplicateAdapter(f"An adapter named {spec.name!r} is already registered")
        self._specs[spec.name] = spec
        return spec

    def _load(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        # The engine's own plugins are entry points of the chartbridge distribution
        # (pyproject.toml); any other installed distribution's follow. Listed by `order`.
        found = entry_points().select(group=ENTRY_POINT_GROUP)
        own = [ep for ep in found if ep.dist is not None and ep.dist.name == "chartbridge"]
        for ep in own + [ep for ep in found if ep not in own]:
            try:
                spec = ep.load()
            except ModuleNotFoundError as exc:
                if exc.name and ep.module.startswith(exc.name):
                    continue            # that adapter is not part of this build
                raise
            self.register(spec)
        self._specs = dict(sorted(self._specs.items(), key=lambda kv: (kv[1].order, kv[0])))
        if not own:
            raise ConfigError("the chartbridge distribution's adapter entry points are missing "
                              "(install it: make install, or pip install -e .)")

    def names(self) -> list[str]:
        """Every plugin's name, by `order` (then name)."""
        self._load()
        return list(self._specs)

    def plugins(self) -> list[AdapterSpec]:
        self._load()
        return list(self._specs.values())

    def get(self, name: str) -> AdapterSpec:
        self._load()
        try:
            return self._specs[name]
        except KeyError:
            known = ", ".join(self._specs) or "none"
            raise UnknownAdapter(f"unknown target {name!r} (known: {known})") from None

    def mapping_fields(self, kind: str) -> dict[str, tuple[Any, Any]]:
        """Every plugin's code-table fields of `kind` ("sections" | "note_types"); two
        plugins declaring one name differently is a DuplicateAdapter error."""
        merged: dict[str, tuple[Any, Any]] = {}
        owner: dict[str, str] = {}
        for spec in self.plugins():
            own = spec.section_fields if kind == "sections" else spec.note_type_fields
            for name, decl in own.items():
                if name in merged and merged[name] != decl:
                    raise DuplicateAdapter(f"{spec.name} and {owner[name]} both declare the "
                                           f"{kind} field {name!r}, differently")
                merged[name], owner[name] = decl, spec.name
        return merged

    def with_capability(self, capability: str) -> list[AdapterSpec]:
        return [s for s in self.plugins() if getattr(s.capabilities, capability)]


registry = Registry()
