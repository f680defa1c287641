"""Capability scenarios written ONCE, run by every vendor suite whose adapter has the
capability (the way one test body runs over every broker).

A vendor suite takes them with `from contract_tests.capabilities.scenarios import *` in its
`test_shared.py` and provides a `driver` fixture (`Driver` below) in its conftest: how to
build a command, how to count what the target filed for it (the simulator's store, or in
a live run the vendor's own read API / the messages that left the client), and, where the
vendor can, how to lose an answer client-side, how to read a filed artifact back (`filed`:
final or not, replaced or not), which corrections exist and how the parent link shows, how
to make an EHR-side edit, how to provoke the server's validation refusal. A capability the
adapter lacks is named in the driver's `lacks` (capability -> reason) and the scenario
skips with that reason (a live run's summary lists it among the skipped, with the reason).
Each scenario runs in simulator mode and in live mode alike; only the driver differs. Which vendors run them is asked of the registry
(`test_every_suite_with_a_driver_runs_the_shared_scenarios` in this package's own tests).
"""
from __future__ import annotations

import threading
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Protocol

import pytest

from chartbridge.core.errors import TransientError, WriteInProgress
from chartbridge.core.models import WriteCommand, WriteKind, WriteStatus

WriteRecord = Any   # chartbridge.ledger.writes.WriteRecord (what ledger.execute returns)

__all__ = ["test_an_approved_note_files_one_final_artifact",
           "test_repeated_approval_files_one_artifact",
           "test_concurrent_approvals_file_one_artifact",
           "test_lost_answer_is_reconciled_not_filed_twice",
           "test_preliminary_then_final",
           "test_correction_links_to_its_parent",
           "test_stale_update_is_refused_and_the_sites_edit_survives",
           "test_a_server_validation_refusal_is_permanent_and_says_why"]

# the capabilities a driver may declare lacking (`Driver.lacks`)
PRELIMINARY, REPLACE, APPEND, STALE_CHECK, VALIDATION_REFUSAL = (
    "preliminary", "replace", "append", "stale_check", "validation_refusal")


@dataclass
class Filed:
    """A filed artifact as the target shows it (read back through its API or the simulator's
    store); None in a field: the target does not show that."""
    final: bool | None = None
    replaced: bool | None = None          # superseded / obsoleted by a correction
    in_the_right_chart: bool | None = None


@dataclass
class Refusal:
    """What the engine made of the target's validation refusal."""
    permanent: bool
    text: str                              # the error text the engine keeps
    names: str                             # what that text must name (an element, a field)


class Driver(Protocol):
    name: str
    adapter: Any

    def command(self, **kw: Any) -> WriteCommand: ...

    def count(self, command: WriteCommand) -> int:
        """Artifacts the target holds (or messages that left the client) for `command`."""

    # a context manager that loses the next write's answer client-side, or None
    losing_the_answer: Callable[[], AbstractContextManager] | None

    lacks: dict[str, str]                 # capability -> why this adapter/target has not it
    updates_in_place: bool                # preliminary -> final edits the same artifact
    shows_parent_link: bool               # a correction names its parent at the target

    def filed(self, ref: str) -> Filed | None:
        """The artifact `ref` read back, or None where the target cannot be read."""

    def final_after(self, prelim: WriteRecord, command: WriteCommand) -> WriteCommand:
        """The approved final version of a filed preliminary note."""

    def correction(self, parent: WriteRecord, command: WriteCommand,
                   kind: WriteKind) -> WriteCommand: ...

    def parent_of(self, record: WriteRecord) -> str | None:
        """The parent a filed correction points at, as the target shows it (None: none)."""

    def edit_elsewhere(self, record: WriteRecord, command: WriteCommand, ledger) -> Any:
        """Someone at the site edits the artifact; returns what `site_edit_survived` checks."""

    def stale_edit(self, record: WriteRecord, command: WriteCommand) -> WriteCommand:
        """Our edit from the version we filed (now stale)."""

    def site_edit_survived(self, record: WriteRecord, token: Any) -> bool: ...

    def refusal(self, ledger) -> Refusal:
        """Provoke a validation refusal by the target and report what the engine made of it."""


def _needs(driver: Driver, *capabilities: str) -> None:
    for capability in capabilities:
        why = driver.lacks.get(capability)
        if why:
            pytest.skip(why)


def _ok(record: WriteRecord) -> WriteRecord:
    assert record.status == WriteStatus.SUCCEEDED, record.last_error
    return record


def test_an_approved_note_files_one_final_artifact(driver: Driver, ledger):
    # Given an approved note; When it is written through the ledger
    command = driver.command()
    record = _ok(ledger.execute(command, driver.adapter))
    # Then the target holds one artifact for it, final, in the patient's chart
    assert record.external_id
    assert driver.count(command) == 1
    filed = driver.filed(record.external_id)
    if filed is not None:
        assert filed.final is not False and filed.in_the_right_chart is not False, filed


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


def test_preliminary_then_final(driver: Driver, ledger):
    _needs(driver, PRELIMINARY)
    # Given a preliminary note filed at the target
    prelim = driver.command(approved=False)
    r1 = _ok(ledger.execute(prelim, driver.adapter))
    first = driver.filed(r1.external_id)
    if first is not None:
        assert first.final is False, first
    # When its approved final version follows
    r2 = _ok(ledger.execute(driver.final_after(r1, prelim), driver.adapter))
    # Then the target shows it final: the same artifact where it updates in place, else a
    # new one beside the preliminary
    assert (r2.external_id == r1.external_id) is driver.updates_in_place
    now = driver.filed(r2.external_id)
    if now is not None:
        assert now.final is True, now
    if not driver.updates_in_place and first is not None:
        assert driver.filed(r1.external_id).final is False


@pytest.mark.parametrize("kind", [WriteKind.REPLACE, WriteKind.APPEND], ids=["replace", "append"])
def test_correction_links_to_its_parent(driver: Driver, ledger, kind):
    _needs(driver, REPLACE if kind == WriteKind.REPLACE else APPEND)
    # Given a filed final note
    original = driver.command()
    r1 = _ok(ledger.execute(original, driver.adapter))
    # When a correction of it is approved
    r2 = _ok(ledger.execute(driver.correction(r1, original, kind), driver.adapter))
    # Then it is a new artifact; where the target shows the link, it names the original,
    # and a replaced original is marked so (an appended one is not)
    assert r2.external_id != r1.external_id
    old = driver.filed(r1.external_id)
    if driver.shows_parent_link:
        assert driver.parent_of(r2) == r1.external_id
        if old is not None and old.replaced is not None:
            assert old.replaced is (kind == WriteKind.REPLACE), old
    else:
        assert driver.parent_of(r2) is None
        if old is not None and old.replaced is not None:
            assert old.replaced is False, old


def test_stale_update_is_refused_and_the_sites_edit_survives(driver: Driver, ledger):
    _needs(driver, STALE_CHECK)
    # Given our preliminary artifact that someone at the site edited since
    prelim = driver.command(approved=False)
    r1 = _ok(ledger.execute(prelim, driver.adapter))
    token = driver.edit_elsewhere(r1, prelim, ledger)
    # When the engine edits it from the version it filed
    record = ledger.execute(driver.stale_edit(r1, prelim), driver.adapter)
    # Then it is stale (permanent, never retried), and the site's edit survives
    assert record.status == WriteStatus.STALE, record.last_error
    assert record.outcome["vendor_code"] == "stale"
    assert driver.site_edit_survived(r1, token)


def test_a_server_validation_refusal_is_permanent_and_says_why(driver: Driver, ledger):
    _needs(driver, VALIDATION_REFUSAL)
    # When the target refuses what it was sent as invalid
    refusal = driver.refusal(ledger)
    # Then the engine holds a permanent failure carrying the target's reason
    assert refusal.permanent, refusal
    assert refusal.names in refusal.text, refusal
