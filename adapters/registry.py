"""EHR adapters by name.

Each adapter package exposes `SPEC = AdapterSpec(...)` in its `__init__`. The built-in ones
are listed below; third-party ones register through the `chartbridge.adapters` entry-point
group. Registering a second adapter under a taken name raises, as dramatiq does for actors.
"""
from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any

from pydantic import BaseModel

from chartbridge.core.errors import ChartbridgeError

BUILTIN = {
    "epic_haiku": "chartbridge.adapters.epic_haiku",
    "fhir_docref": "chartbridge.adapters.fhir_docref",
    "athenaone": "chartbridge.adapters.athenaone",
    "hl7_mdm": "chartbridge.adapters.hl7_mdm",
}
ENTRY_POINT_GROUP = "chartbridge.adapters"


@dataclass(frozen=True)
class AdapterSpec:
    name: str
    config_model: type[BaseModel]
    # factory(org_config, target_config, services) -> EhrAdapter; `services` carries the
    # shared engine pieces an adapter may need (clock, token store, http client factory).
    factory: Callable[..., Any] | None = None
    needs_approval: bool = True        # Epic hands drafts back for review in Epic instead
    description: str = ""
    resource_kind: str = "document"    # what one write creates at the EHR (part of the key)


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
        for name, module in BUILTIN.items():
            try:
                mod = importlib.import_module(module)
            except ModuleNotFoundError as exc:
                if exc.name and module.startswith(exc.name):
                    continue            # that adapter is not part of this build yet
                raise
            spec = getattr(mod, "SPEC", None)
            if spec is not None:
                self.register(spec)
        for ep in entry_points().select(group=ENTRY_POINT_GROUP):
            self.register(ep.load())

    def names(self) -> list[str]:
        self._load()
        return sorted(self._specs)

    def get(self, name: str) -> AdapterSpec:
        self._load()
        try:
            return self._specs[name]
        except KeyError:
            known = ", ".join(sorted(self._specs)) or "none"
            raise UnknownAdapter(f"unknown target {name!r} (known: {known})") from None


registry = Registry()
