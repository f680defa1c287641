"""A fake EHR adapter whose "chart" is a file, so separate processes share it and a test
can count exactly how many documents were filed."""
from __future__ import annotations

import fcntl
import json
import os
import signal
import threading
import time
from pathlib import Path

from chartbridge.core.errors import OutcomeUnknown, PermanentError, TransientError
from chartbridge.core.models import WriteCommand, WriteOutcome


class FileEhr:
    name = "fake"

    def __init__(self, path: Path, *, fail_with: Exception | None = None,
                 hold: threading.Event | None = None, can_look_up: bool = True,
                 hang_after_filing: bool = False, die_before_filing: bool = False) -> None:
        self.path = Path(path)
        self.fail_with = fail_with
        self.hold = hold
        self.can_look_up = can_look_up
        self.hang_after_filing = hang_after_filing
        self.die_before_filing = die_before_filing
        self.sends = 0
        self.reconciles = 0

    def documents(self) -> list[dict]:
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line]

    def send(self, command: WriteCommand) -> WriteOutcome:
        self.sends += 1
        if self.hold is not None:
            self.hold.wait(timeout=30)
        if self.fail_with is not None:
            raise self.fail_with
        if self.die_before_filing:     # the worker dies between its claim and the call
            Path(str(self.path) + ".dying").write_text("dying")
            os.kill(os.getpid(), signal.SIGKILL)
        doc_id = f"doc-{len(self.documents()) + 1}-{os.getpid()}"
        with open(self.path, "a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            fh.write(json.dumps({"key": command.idempotency_key(), "id": doc_id}) + "\n")
        if self.hang_after_filing:
            Path(str(self.path) + ".filed").write_text("filed")
            while True:           # the worker "dies" here: the test kills this process
                time.sleep(0.05)
        return WriteOutcome(external_id=doc_id)

    def reconcile(self, command: WriteCommand) -> WriteOutcome | None:
        self.reconciles += 1
        if not self.can_look_up:
            raise OutcomeUnknown("this EHR cannot be searched for the write")
        for doc in self.documents():
            if doc["key"] == command.idempotency_key():
                return WriteOutcome(external_id=doc["id"])
        return None


__all__ = ["FileEhr", "PermanentError", "TransientError"]
