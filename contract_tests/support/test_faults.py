"""The shared fault queue: first match in order, `times` counting down (None: until
cleared), `fired` counting up, a copy handed out, a bound on what may be queued."""
from __future__ import annotations

import threading
from dataclasses import dataclass

import pytest

from chartbridge.core.errors import InputError
from contract_tests.support.faults import FaultQueue, VendorFaults


@dataclass
class Fault:
    call: str
    status: int = 503
    times: int | None = 1
    fired: int = 0


def on(call: str):
    return lambda f: f.call == call


def test_take_hands_out_the_first_matching_fault_in_the_order_added():
    # Given two faults for "upload" and one for "list"
    q: FaultQueue[Fault] = FaultQueue()
    q.add(Fault("list", 500))
    q.add(Fault("upload", 502))
    q.add(Fault("upload", 503))
    # When an upload takes a fault
    got = q.take(on("upload"))
    # Then it is the first upload fault, and the list fault was not touched
    assert got is not None and got.status == 502
    assert [f["status"] for f in q.pending()] == [500, 503]
    assert q.take(on("token")) is None


def test_times_counts_down_and_a_spent_fault_leaves_the_queue():
    q: FaultQueue[Fault] = FaultQueue()
    q.add(Fault("upload", times=2))
    first = q.take(on("upload"))
    assert q.pending() == [{"call": "upload", "status": 503, "times": 1, "fired": 1}]
    second = q.take(on("upload"))
    assert (first.fired, second.fired) == (1, 2)
    assert q.pending() == [] and len(q) == 0
    assert q.take(on("upload")) is None


def test_times_none_applies_until_cleared():
    q: FaultQueue[Fault] = FaultQueue()
    q.add(Fault("list", times=None))
    for n in range(1, 6):
        got = q.take(on("list"))
        assert got is not None and got.fired == n
    assert len(q) == 1 and q.pending()[0]["times"] is None and q.pending()[0]["fired"] == 5
    q.clear()
    assert q.take(on("list")) is None and q.pending() == []


def test_take_returns_a_copy_of_one_firing():
    q: FaultQueue[Fault] = FaultQueue()
    queued = q.add(Fault("upload", times=3))
    got = q.take(on("upload"))
    # The copy says "this one firing"; the queued fault keeps its own count
    assert got is not queued and got.times == 1 and queued.times == 2
    got.status = 418
    assert q.pending()[0]["status"] == 503


def test_the_queue_is_bounded_and_names_the_field():
    q: FaultQueue[Fault] = FaultQueue(limit=2)
    q.add(Fault("a"))
    q.add(Fault("b"))
    with pytest.raises(InputError) as err:
        q.add(Fault("c"))
    assert err.value.field == "faults"
    assert len(q) == 2


def test_concurrent_takes_fire_a_fault_exactly_times_times():
    # Given one fault for 50 requests and 8 threads each trying 20 times
    q: FaultQueue[Fault] = FaultQueue()
    q.add(Fault("upload", times=50))
    hits: list[int] = []
    lock = threading.Lock()
    start = threading.Barrier(8)

    def worker() -> None:
        start.wait(timeout=10)
        for _ in range(20):
            got = q.take(on("upload"))
            if got is not None:
                with lock:
                    hits.append(got.fired)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    # Then exactly 50 requests saw it, each with its own firing number
    assert sorted(hits) == list(range(1, 51))
    assert len(q) == 0


def test_a_simulator_lock_can_be_shared_and_held_while_taking():
    lock = threading.RLock()
    q: FaultQueue[Fault] = FaultQueue(lock=lock)
    q.add(Fault("upload"))
    with lock:                      # a simulator taking a fault inside its own critical section
        assert q.take(on("upload")) is not None


class _Faults(VendorFaults[Fault]):
    """A vendor's faults: its own checks on add, its own matching rule on take."""

    def add(self, call: str, status: int = 503, times: int | None = 1) -> Fault:
        if call not in ("upload", "any"):
            raise InputError("unknown call", field="call")
        return self._queue.add(Fault(call, status, times))

    def take(self, call: str) -> Fault | None:
        return self._queue.take(lambda f: f.call in (call, "any"))


def test_vendor_faults_share_listing_and_clearing():
    faults = _Faults()
    with pytest.raises(InputError) as err:
        faults.add("token")
    assert err.value.field == "call"
    faults.add("any", 500, times=None)
    faults.add("upload", 502)
    assert len(faults) == 2 and [f["call"] for f in faults.pending()] == ["any", "upload"]
    assert faults.take("upload").status == 500          # "any" was queued first
    faults.clear()
    assert faults.pending() == [] and faults.take("upload") is None
