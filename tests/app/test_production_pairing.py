"""The production pairing, exactly as deploy/Procfile defines it: `release` (migrations),
then `web` (waitress, several WSGI threads), two `worker`s and the `sweeper`, each its own
OS process started from its Procfile line through a shell, on PostgreSQL and RabbitMQ. The
Epic demo visit is played through it from the Epic simulator: two recordings, a clinician's
edit in Epic between them, the edited section never sent again, every write settled."""
from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import pytest
import yaml

from chartbridge.bootstrap import bootstrap
from chartbridge.core.models import WriteStatus
from chartbridge.demo_audio import DEMO_VISIT
from contract_tests.epic_haiku.simulator import EpicSimulator
from contract_tests.epic_haiku.stack import (CLIENT_ID, EPIC_ISSUER, ORG, public_jwks,
                                             write_org_config)

pytestmark = [pytest.mark.postgres, pytest.mark.rabbitmq, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[2]
PROCFILE = REPO / "deploy" / "Procfile"
AMQP = os.environ.get("CHARTBRIDGE_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
EDITED = "51847-2"


def procfile() -> dict[str, str]:
    lines = {}
    for line in PROCFILE.read_text().splitlines():
        m = re.match(r"^([A-Za-z0-9_-]+):\s*(.+)$", line)
        if m:
            lines[m.group(1)] = m.group(2)
    return lines


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def amqp_or_fail() -> None:
    try:
        import pika
        pika.BlockingConnection(pika.URLParameters(AMQP)).close()
    except Exception as exc:  # noqa: BLE001 - any failure to reach the server
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            raise RuntimeError(f"RabbitMQ is required in CI but unreachable: {exc}") from exc
        pytest.skip(f"No connection to RabbitMQ: {exc}")


def fresh_database(admin_url: str) -> str:
    from sqlalchemy import create_engine
    engine = create_engine(admin_url.rsplit("/", 1)[0] + "/postgres", isolation_level="AUTOCOMMIT")
    name = f"cb_pair_{uuid.uuid4().hex[:10]}"
    with engine.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    engine.dispose()
    return admin_url.rsplit("/", 1)[0] + f"/{name}"


class Processes:
    def __init__(self, env: dict, logs: Path) -> None:
        self.env, self.logs, self.running = env, logs, []

    def start(self, name: str, command: str) -> subprocess.Popen:
        log = open(self.logs / f"{name}.log", "w")
        proc = subprocess.Popen(["bash", "-c", f"exec {command}"], env=self.env, stdout=log,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
        self.running.append((name, proc, log))
        return proc

    def log(self, name: str) -> str:
        return (self.logs / f"{name}.log").read_text()

    def stop(self) -> dict[str, int]:
        codes = {}
        for name, proc, _log in self.running:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for name, proc, log in self.running:
            try:
                codes[name] = proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                codes[name] = proc.wait()
            log.close()
        return codes


def wait(predicate, timeout: float, what: str, procs: Processes | None = None):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if procs is not None:
            dead = [n for n, p, _ in procs.running if p.poll() is not None and n != "release"]
            assert not dead, f"{dead} exited: " + " | ".join(procs.log(n)[-1500:] for n in dead)
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def test_procfile_pairing_plays_the_epic_visit_on_postgres_and_rabbitmq(tmp_path, postgres_url):
    amqp_or_fail()
    lines = procfile()
    assert set(lines) == {"release", "web", "worker", "sweeper"}
    db_url = fresh_database(postgres_url)
    port = free_port()
    queue = f"pair-{uuid.uuid4().hex[:8]}"
    sim = EpicSimulator(epic_client_id=EPIC_ISSUER, engine_url=f"http://127.0.0.1:{port}")
    sim.start()
    orgs, keys = tmp_path / "orgs", tmp_path / "keys"
    path = write_org_config(orgs, keys, sim)
    sim.register_client(CLIENT_ID, public_jwks(keys, yaml.safe_load(path.read_text())
                                               ["targets"]["epic_haiku"]["key_id"]))
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHARTBRIDGE_")}
    env.update(CHARTBRIDGE_DATABASE_URL=db_url, CHARTBRIDGE_BROKER_URL=AMQP,
               CHARTBRIDGE_QUEUE=queue, CHARTBRIDGE_CONFIG_DIR=str(orgs),
               CHARTBRIDGE_SWEEP_EVERY="2", CHARTBRIDGE_WEB_THREADS="6",
               CHARTBRIDGE_WORKER_THREADS="2", PORT=str(port),
               PATH=os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")]))
    procs = Processes(env, tmp_path)
    try:
        # release first (migrations), then every long-running process of its own
        assert procs.start("release", lines["release"]).wait(timeout=120) == 0, procs.log("release")
        procs.start("web", lines["web"])
        procs.start("worker-1", lines["worker"])
        procs.start("worker-2", lines["worker"])
        procs.start("sweeper", lines["sweeper"])
        base = f"http://127.0.0.1:{port}"

        def ready() -> bool:
            try:
                return httpx.get(f"{base}/readyz", timeout=2).json().get("database") == "postgresql"
            except httpx.HTTPError:
                return False
        wait(ready, 60, "the web process to be ready", procs)
        assert "6 WSGI threads" in procs.log("web")
        assert "worker: external" in procs.log("web")      # the web process runs no jobs
        wait(lambda: all("worker running" in procs.log(n) for n in ("worker-1", "worker-2")),
             60, "both workers", procs)

        # the Epic demo visit, from Epic's side, over HTTP to the web process
        wav = DEMO_VISIT.read_bytes()
        sid = "AMB-PAIR-0001"
        sim.begin_session(ORG, session_id=sid)
        sim.record(sid, wav, chunk_seconds=10, status="Stopped")
        first = sim.wait_documentation(sid, 1, timeout=240)
        assert EDITED in {s["SectionID"] for s in first["Sections"]}
        sim.edit_sections(sid, [EDITED])
        from chartbridge.demo import _wav_slice
        sim.record(sid, _wav_slice(wav, 20.0), chunk_seconds=10, status="Stopped")
        second = sim.wait_documentation(sid, 2, timeout=240)
        assert EDITED not in {s["SectionID"] for s in second["Sections"]}

        engine = bootstrap(database_url=db_url, config_dir=orgs, migrate=False)
        try:
            session = engine.store.find_session(ORG, "epic_haiku", sid)

            def settled():
                rows = engine.ledger.list(ORG, session_id=session.id)
                return len(rows) == 2 and all(r.status == WriteStatus.SUCCEEDED for r in rows) and rows
            rows = wait(settled, 60, "both handoffs written", procs)
            assert [r.external_id for r in rows] == [f"{sid}/v1", f"{sid}/v2"]
            assert sim.call_count("DocumentationReady") == 2          # each sent exactly once
        finally:
            engine.db.dispose()
    finally:
        codes = procs.stop()
        sim.stop()
        _delete_queues(queue)
    assert all(code == 0 for name, code in codes.items()), (
        codes, {n: procs.log(n)[-800:] for n, c in codes.items() if c})


def _delete_queues(queue: str) -> None:
    try:
        import pika
        conn = pika.BlockingConnection(pika.URLParameters(AMQP))
        channel = conn.channel()
        for name in (queue, f"{queue}.DQ", f"{queue}.XQ"):
            channel.queue_delete(name)
        conn.close()
    except Exception:  # noqa: BLE001 - best effort: a leftover test queue is harmless
        pass
