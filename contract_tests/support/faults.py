"""One queue of injected faults, shared by every simulator.

A simulator defines its own fault record (a dataclass with `times`: how many more
requests it applies to, None for "until cleared", and `fired`: how often it has applied)
and its own validation of what may be injected; this queue only stores them, in the order
they were added, and hands out the first that matches a request.
"""
from __future__ import annotations

import copy
import threading
from collections.abc import Callable
from dataclasses import asdict
from typing import Any, Generic, TypeVar

from chartbridge.core.errors import InputError

F = TypeVar("F")


class FaultQueue(Generic[F]):
    def __init__(self, *, limit: int = 1000, lock: threading.RLock | None = None) -> None:
        self._lock = lock or threading.RLock()
        self._faults: list[F] = []
        self._limit = limit

    def add(self, fault: F) -> F:
        with self._lock:
            if len(self._faults) >= self._limit:
                raise InputError(f"too many faults queued ({self._limit}); clear some",
                                 field="faults")
            self._faults.append(fault)
        return fault

    def take(self, matches: Callable[[F], bool]) -> F | None:
        """The first queued fault `matches` accepts, as a copy with `times` 1 of that
        firing; the queued one counts the firing and leaves the queue when spent."""
        with self._lock:
            for fault in self._faults:
                if not matches(fault):
                    continue
                fault.fired += 1                                # type: ignore[attr-defined]
                times = fault.times                             # type: ignore[attr-defined]
                if times is not None:
                    fault.times = times - 1                     # type: ignore[attr-defined]
                    if fault.times <= 0:                        # type: ignore[attr-defined]
                        self._faults.remove(fault)
                fired = copy.copy(fault)
                fired.times = 1                                 # type: ignore[attr-defined]
                return fired
        return None

    def pending(self) -> list[dict[str, Any]]:
        with self._lock:
            return [asdict(f) for f in self._faults]           # type: ignore[call-overload]

    def clear(self) -> None:
        with self._lock:
            self._faults.clear()

    def __len__(self) -> int:
        with self._lock:
            return len(self._faults)


class VendorFaults(Generic[F]):
    """Base of a simulator's ``faults`` attribute. The vendor's subclass adds ``add(...)``
    (checks what may be injected, builds its Fault, hands it to ``self._queue.add``) and
    ``take(<request facts>)`` (its matching rule over ``self._queue.take``); listing and
    clearing are the same for every vendor."""

    def __init__(self, *, limit: int = 1000, lock: threading.RLock | None = None) -> None:
        self._queue: FaultQueue[F] = FaultQueue(limit=limit, lock=lock)

    def pending(self) -> list[dict[str, Any]]:
        return self._queue.pending()

    def clear(self) -> None:
        self._queue.clear()

    def __len__(self) -> int:
        return len(self._queue)
