"""What arrived: the bounded call log and the per-practice requests-per-second windows
behind athena's per-practice quota (429 when a practice sends more than its rate)."""
from __future__ import annotations

import itertools
import threading
from collections import deque
from typing import Any, Callable


class Traffic:
    def __init__(self, lock: threading.RLock, now: Callable[[], float], max_calls: int) -> None:
        self._lock, self._now = lock, now
        self._calls: deque[dict[str, Any]] = deque(maxlen=max_calls)
        self._seq = itertools.count(1)
        self._windows: dict[str, deque[float]] = {}
        self._all_window: deque[float] = deque()
        self.max_rps: dict[str, int] = {}
        self.max_rps_all = 0

    def log(self, method: str, path: str, call: str, practiceid: str | None,
            status: int | str, fault_kind: str | None, **extra: Any) -> None:
        with self._lock:
            entry = {"seq": next(self._seq), "t": self._now(), "method": method,
                     "path": path, "call": call, "practiceid": practiceid,
                     "status": status, "fault": fault_kind}
            entry.update(extra)
            self._calls.append(entry)

    def calls(self, call: str | None = None) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(c) for c in self._calls if call is None or c["call"] == call]

    def arrived(self, practiceid: str, known: bool) -> None:
        """Count one API request in its practice's 1-second window (unknown practices
        share one window, so the windows stay bounded)."""
        with self._lock:
            if not known:
                practiceid = "unknown"
            now = self._now()
            window = self._windows.setdefault(practiceid, deque())
            window.append(now)
            while window and window[0] <= now - 1.0:
                window.popleft()
            self.max_rps[practiceid] = max(self.max_rps.get(practiceid, 0), len(window))
            self._all_window.append(now)
            while self._all_window and self._all_window[0] <= now - 1.0:
                self._all_window.popleft()
            self.max_rps_all = max(self.max_rps_all, len(self._all_window))

    def over(self, practiceid: str, per_second: int) -> bool:
        with self._lock:
            return len(self._windows.get(practiceid, ())) > per_second
