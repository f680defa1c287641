"""The Store port (core/ports.py) and the SQL store that implements it: every method the
Protocols declare exists on SqlStore with a compatible signature, so use cases typed over the
port run on the real store — and the port cannot drift from it unnoticed."""
from __future__ import annotations

import inspect

import pytest

from chartbridge.core import ports
from chartbridge.ledger import store as sql
from chartbridge.ledger.store import SqlStore

AGGREGATES = [(ports.SessionStore, sql.SessionStore), (ports.RecordingStore, sql.RecordingStore),
              (ports.DraftStore, sql.DraftStore), (ports.SafeguardStore, sql.SafeguardStore),
              (ports.AuditLog, sql.AuditLog)]


def _methods(protocol) -> list[str]:
    return sorted(n for n in protocol.__dict__ if not n.startswith("_")
                  and callable(protocol.__dict__[n]))


def _all_methods(protocol) -> list[str]:
    """A Protocol's methods with those of the Protocols it extends."""
    return sorted({n for cls in protocol.__mro__ if cls.__module__ == ports.__name__
                   for n in _methods(cls)})


def _shape(fn) -> list[tuple]:
    """(name, kind, default) per parameter, self left out: what a caller depends on."""
    return [(p.name, p.kind, p.default) for p in
            list(inspect.signature(fn).parameters.values())[1:]]


def test_the_whole_store_is_every_aggregate():
    # Given the aggregate Protocols, When Store is read, Then it declares all their methods
    declared = set().union(*(_methods(proto) for proto, _ in AGGREGATES))
    assert set(_all_methods(ports.Store)) == declared
    assert len(declared) >= 35


@pytest.mark.parametrize("protocol, impl", AGGREGATES, ids=lambda x: x.__name__)
def test_each_aggregate_store_implements_its_port(protocol, impl):
    # Given one aggregate's Protocol and its SQL module's class
    names = _methods(protocol)
    assert names, "a port without methods checks nothing"
    for name in names:
        # Then each method exists there, with the same parameters, kinds and defaults
        assert hasattr(impl, name), f"{impl.__name__} lacks {name}"
        assert _shape(getattr(impl, name)) == _shape(getattr(protocol, name)), name


def test_sqlstore_satisfies_the_store_protocol(tmp_path):
    from chartbridge.core.clock import SystemClock
    from chartbridge.ledger.db import Database

    store = SqlStore(Database.from_url(f"sqlite:///{tmp_path / 'p.db'}"), SystemClock())
    assert isinstance(store, ports.Store)
    for proto, _ in AGGREGATES:
        assert isinstance(store, proto)
    for name in _all_methods(ports.Store):
        assert _shape(getattr(SqlStore, name)) == _shape(getattr(ports.Store, name)), name


def test_a_store_missing_a_method_does_not_satisfy_the_port():
    class Partial(sql.SessionStore):
        pass

    assert not isinstance(Partial.__new__(Partial), ports.Store)
    assert isinstance(Partial.__new__(Partial), ports.SessionStore)
