"""The registry is the one place the engine learns its vendors: found through entry points
(the engine's own included), listed by each plugin's `order`, and asked per session which
EHR, if any, takes the draft back for review."""
from types import SimpleNamespace

import pytest

from chartbridge.adapters.registry import AdapterSpec, DuplicateAdapter, Registry, registry
from chartbridge.jobs import _hands_off
from pydantic import BaseModel


def test_built_in_plugins_come_from_entry_points_in_their_declared_order():
    fresh = Registry()
    assert fresh.names() == ["epic_haiku", "fhir_docref", "athenaone", "hl7_mdm"]
    assert [p.order for p in fresh.plugins()] == sorted(p.order for p in fresh.plugins())


def test_a_second_plugin_under_a_taken_name_is_refused():
    fresh = Registry()
    fresh.names()
    with pytest.raises(DuplicateAdapter):
        fresh.register(AdapterSpec(name="hl7_mdm", config_model=BaseModel))


@pytest.mark.parametrize("source, hands_off", [
    ("epic_haiku", True),       # Epic opened it: the draft goes back to Epic for review
    ("api", False),             # the capture API: approved here, written to the targets
    ("fhir_docref", False),     # a target that opens no sessions and takes no handoff
    ("no_such_plugin", False),  # a source whose plugin is no longer installed
])
def test_the_handoff_goes_to_the_plugin_that_opened_the_session(source, hands_off):
    assert _hands_off(SimpleNamespace(source=source)) is hands_off


def test_only_the_epic_plugin_declares_the_handoff_among_the_built_ins():
    assert [p.name for p in registry.with_capability("hands_off_drafts")] == ["epic_haiku"]


def test_the_handoff_plugins_adapter_implements_the_handoff_port():
    from chartbridge.adapters.epic_haiku.adapter import EpicHaikuAdapter
    from chartbridge.core.ports import HandoffAdapter

    import inspect

    for name, member in inspect.getmembers(HandoffAdapter, inspect.isfunction):
        if name.startswith("_"):
            continue
        mine = getattr(EpicHaikuAdapter, name, None)
        assert callable(mine), name
        assert list(inspect.signature(mine).parameters) == \
            list(inspect.signature(member).parameters), name
    epic = registry.get("epic_haiku").capabilities
    assert (epic.handoff_kind, epic.notice_kind) == ("DocumentationReady",
                                                     "AmbientRecordingsProcessed")
