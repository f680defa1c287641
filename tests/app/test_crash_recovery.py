"""A worker process killed with SIGKILL at four points of an Epic session, on PostgreSQL +
Redis: another worker resumes the work, the note is accepted within 15 s of the kill, and
Epic holds exactly one accepted DocumentationReady for the version.

The engine's web side (and a sweeper) runs in this process; workers are separate processes
(tests/app/crash_worker.py). The killed worker hangs at its point until the kill, still
heartbeating, so the kill lands exactly there."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from chartbridge import recovery
from chartbridge.core.models import VersionState, WriteStatus
from contract_tests.epic_haiku.simulator import synth_wav
from contract_tests.epic_haiku.stack import ORG, EpicStack
from contract_tests.epic_haiku.test_contract import redis_url

REPO = Path(__file__).resolve().parents[2]
AUDIO = synth_wav(25)               # three chunks of 10 s
WITHIN_S = 15.0
RESULTS: dict[str, float] = {}


def wait_until(predicate, timeout: float, what: str) -> float:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"{what} not met within {timeout} s"
        time.sleep(0.05)
    return time.monotonic()


def spawn(stack: EpicStack, workdir: Path, name: str, crash_at: str | None) -> subprocess.Popen:
    env = dict(os.environ, CHARTBRIDGE_DATABASE_URL=stack.database_url,
               CHARTBRIDGE_BROKER_URL=stack.broker_url,
               CHARTBRIDGE_CONFIG_DIR=str(workdir / "orgs"), QUEUE=stack.queue,
               CRASH_AT=crash_at or "", CRASH_MARKER=str(workdir / f"{name}.crashed"),
               READY_MARKER=str(workdir / f"{name}.ready"))
    log = open(workdir / f"{name}.log", "wb")
    proc = subprocess.Popen([sys.executable, str(REPO / "tests/app/crash_worker.py")], env=env,
                            cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    wait_until(lambda: (workdir / f"{name}.ready").exists() or proc.poll() is not None,
               60, f"worker {name} ready")
    assert proc.poll() is None, (workdir / f"{name}.log").read_text()[-2000:]
    return proc


@pytest.mark.postgres
@pytest.mark.redis
@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
@pytest.mark.parametrize("point", ["download", "transcription", "before_answer", "after_answer"])
def test_killed_worker_is_resumed_and_the_note_accepted_once(point, database_url, tmp_path):
    sid = f"AMB-CRASH-{uuid.uuid4().hex[:6]}"
    workers: list[subprocess.Popen] = []
    with EpicStack(tmp_path, database_url, broker_url=redis_url(), in_process_worker=False,
                   queue=f"crash-{uuid.uuid4().hex[:8]}",
                   sweep_interval_s=recovery.SWEEP_INTERVAL_S) as stack:
        try:
            victim = spawn(stack, tmp_path, "victim", point)
            workers.append(victim)
            stack.sim.begin_session(ORG, session_id=sid)
            stack.sim.record(sid, AUDIO, chunk_seconds=10, status="Stopped")
            wait_until(lambda: (tmp_path / "victim.crashed").exists(), 60, f"worker at {point}")
            workers.append(spawn(stack, tmp_path, "survivor", None))

            victim.send_signal(signal.SIGKILL)
            victim.wait(10)
            killed = time.monotonic()

            def accepted() -> bool:
                session = stack.session(sid)
                rows = [r for r in stack.ledger_rows(sid)
                        if r.resource_kind == "DocumentationReady"]
                done = session is not None and any(
                    r.state == VersionState.DONE for r in stack.engine.store.recordings(
                        ORG, session.id))
                return (done and len(rows) == 1 and rows[0].status == WriteStatus.SUCCEEDED
                        and len(stack.sim.documentation(sid)) == 1)

            took = wait_until(accepted, 60, "note accepted after the kill") - killed
            RESULTS[point] = took
            print(f"recovery after kill at {point}: {took:.1f} s")
            assert took <= WITHIN_S, f"{point}: {took:.1f} s"

            # exactly once: one accepted copy per version, and no conflicting second body
            docs = stack.sim.documentation(sid)
            assert [d["RecordingVersion"] for d in docs] == [1]
            assert all(status in (200, None) for _call, status in
                       stack.sim.call_log("DocumentationReady")), stack.sim.call_log()
        finally:
            for proc in workers:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait(10)
