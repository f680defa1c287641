"""The shared scenarios run over every adapter that files approved notes, asked of the
registry (not a vendor list): each such plugin's suite takes scenarios.py's bodies in a
test_shared.py and provides the `driver` they need."""
from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path

import pytest

from chartbridge.adapters.registry import registry
from contract_tests.capabilities import scenarios

FILING = [p for p in registry.plugins() if p.suite and not p.capabilities.hands_off_drafts]


def test_the_registry_has_filing_adapters():
    assert len(FILING) >= 3


@pytest.mark.parametrize("plugin", FILING, ids=lambda p: p.name)
def test_each_filing_adapters_suite_runs_every_shared_scenario(plugin):
    spec = importlib.util.find_spec(plugin.suite)
    assert spec is not None and spec.submodule_search_locations, plugin.suite
    shared = importlib.import_module(f"{plugin.suite}.test_shared")
    for name in scenarios.__all__:
        assert getattr(shared, name, None) is getattr(scenarios, name), (plugin.name, name)
    conftest = Path(next(iter(spec.submodule_search_locations))) / "conftest.py"
    assert "def driver(" in conftest.read_text(encoding="utf-8"), f"{plugin.name}: no driver fixture"
