"""Which lane the work on this thread is in.

Work a clinician waits for — everything after the Stop: the last chunks, the final pass,
drafting, the handoff — runs in the foreground (the default). A mid-recording chunk is
needed only at the Stop, so its job runs in the background lane: a CPU-bound adapter may
serve it at a lower operating-system priority, so that on a saturated machine it yields
the cores to foreground work instead of sharing them (the whisper transcriber keeps one
model replica per lane, the background one at a higher nice value: adapters/transcription/
whisper.py). The lane is a property of the job, set by the worker (chartbridge/jobs.py).
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

FOREGROUND, BACKGROUND = "foreground", "background"

_lane: ContextVar[str] = ContextVar("chartbridge-lane", default=FOREGROUND)


@contextmanager
def background() -> Iterator[None]:
    """Run the block in the background lane."""
    token = _lane.set(BACKGROUND)
    try:
        yield
    finally:
        _lane.reset(token)


def lane() -> str:
    return _lane.get()
