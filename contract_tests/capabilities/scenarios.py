"""Capability scenarios written ONCE, run by every vendor suite whose adapter has the
capability (the way one test body runs over every broker).

A vendor suite takes them with `from contract_tests.capabilities.scenarios import *` in its
`test_shared.py` and provides a `driver` fixture (`Driver` below) in its conftest: how to
build a command, how to count what the target filed for it (the simulator's store, or in
a live run the vendor's own read API / the messages that left the client), and, where the
vendor can, how to lose an answer client-side. Each scenario runs in simulator mode and in
live mode alike; only the driver differs. Which vendors run them is asked of the registry
(`test_every_suite_with_a_driver_runs_the_shared_scenarios` in this package's own tests).
"""
from __future__ import annotations

import threading
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any, Protocol

import pytest

from chartbridge.core.errors import TransientError, WriteInProgress
from chartbridge.core.models import WriteCommand, WriteStatus

__all__ = ["test_repeated_approval_files_one_artifact",
           "test_concurrent_approvals_file_one_artifact",
           "test_lost_answer_is_reconciled_not_filed_twice"]


class Driver(Protocol):
    name: str
    adapter: Any

    def command(self, **kw: Any) -> WriteCommand: ...

    def count(self, command: WriteCommand) -> int:
        """Artifacts the target holds (or messages that left the client) for `command`."""

    # a context manager that loses the next write's answer client-side, or None
    losing_the_answer: Callable[[], AbstractContextManager] | None


def test_repeated_approval_files_one_artifact(driver: Driver, ledger):
    # Given the same approval delivered three times (retries, double clicks: new correlation ids)
    command = driver.command()
    records = [ledger.execute(command.model_copy(update={"correlation_id": f"again-{i}"}),
                              driver.adapter) for i in range(3)]
    # Then every caller sees one outcome and the target holds one artifact
    assert {r.status for r in records} == {WriteStatus.SUCCEEDED}, records[0].last_error
    assert {r.external_id for r in records} == {records[0].external_id}
    assert driver.count(command) == 1


def test_concurrent_approvals_file_one_artifact(driver: Driver, ledger):
    # Given the same approval arriving on four threads at once
    command = driver.command()
    barrier, results, lock = threading.Barrier(4), [], threading.Lock()

    def run(i: int) -> None:
        barrier.wait()
        try:
            out: Any = ledger.execute(command.model_copy(update={"correlation_id": f"t{i}"}),
                                      driver.adapter)
        except WriteInProgress as exc:
            out = exc
        except Exception as exc:  # noqa: BLE001 - reported by the assertion below
            out = ("unexpected", repr(exc))
        with lock:
            results.append(out)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    # Then each caller got the outcome or "in progress", and one artifact was filed
    assert [r for r in results if isinstance(r, tuple)] == []
    final = ledger.execute(command, driver.adapter)
    assert final.status == WriteStatus.SUCCEEDED
    assert {r.external_id for r in results if not isinstance(r, WriteInProgress)} <= {final.external_id}
    assert driver.count(command) == 1


def test_lost_answer_is_reconciled_not_filed_twice(driver: Driver, ledger):
    if driver.losing_the_answer is None:
        pytest.skip(getattr(driver, "why_no_lost_answer", None)
                    or f"{driver.name}: no answer to lose client-side that a reconcile could find")
    # Given the target filed the note and its answer was lost on the way back to us
    command = driver.command()
    with driver.losing_the_answer():
        with pytest.raises(TransientError) as exc:
            ledger.execute(command, driver.adapter)
    assert exc.value.maybe_delivered is True
    # When the write is retried
    record = ledger.execute(command, driver.adapter)
    # Then it is found (reconciled), not filed again
    assert record.status == WriteStatus.SUCCEEDED, record.last_error
    assert record.outcome.get("reconciled") is True
    assert driver.count(command) == 1
