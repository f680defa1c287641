"""An Epic site and an engine wired together on loopback: the Epic simulator (Epic's
side, written from the vendor page) and the real engine (waitress + Flask + dramatiq
worker + SQLite/PostgreSQL). Used by the contract suite and by `chartbridge demo`.

Nothing here builds payloads: the simulator and the engine speak only over HTTP.
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from chartbridge import runtime
from chartbridge.bootstrap import Engine, bootstrap
from chartbridge.config.loader import EXAMPLE_ORGS
from chartbridge.web import create_app

from .simulator import EpicSimulator

ORG = "demo-epic"
CLIENT_ID = "demo-epic-backend-client"
EPIC_ISSUER = "demo-epic-interconnect"


class ChunkTranscriber:
    """A stand-in transcriber for scenarios about the Epic contract, not about speech: the
    simulator's chunks are synthetic tones. One segment per chunk, at the chunk's offset."""

    name, model_id = "fake", "0"

    def transcribe(self, audio, *, offset_ms=0, hotwords=(), lead_in=None, final=False):
        from chartbridge.core.ports import SpokenSegment
        return [SpokenSegment(offset_ms, offset_ms + 900, f"words at {offset_ms}", -0.1)]


def write_org_config(config_dir: Path, keys_dir: Path, sim: EpicSimulator, *,
                     base_file: Path | None = None) -> Path:
    """The example org pointed at a running simulator, with a freshly generated key
    referenced by file (never inline)."""
    keys_dir.mkdir(parents=True, exist_ok=True)
    config_dir.mkdir(parents=True, exist_ok=True)
    key_file = keys_dir / "epic-backend.pem"
    if not key_file.exists():
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                               serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
        key_file.chmod(0o600)
    doc = yaml.safe_load((base_file or EXAMPLE_ORGS / "demo-epic.yaml").read_text())
    epic = doc["targets"]["epic_haiku"]
    epic.update(client_id=CLIENT_ID, token_url=sim.token_url, private_key=f"file:{key_file}",
                callback_url=sim.callback_url.rstrip("/"))
    epic["inbound"] = {"issuer": EPIC_ISSUER, "jwks_url": sim.jwks_url}
    epic.pop("fhir_base", None)
    path = config_dir / f"{ORG}.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def public_jwks(keys_dir: Path, key_id: str) -> dict:
    """What the site registers for our backend client: the public key, with its kid."""
    from joserfc.jwk import RSAKey

    key = serialization.load_pem_private_key((keys_dir / "epic-backend.pem").read_bytes(), None)
    pem = key.public_key().public_bytes(serialization.Encoding.PEM,
                                        serialization.PublicFormat.SubjectPublicKeyInfo)
    jwk = RSAKey.import_key(pem).as_dict(private=False)
    jwk.update(kid=key_id, alg="RS384", use="sig")
    return {"keys": [jwk]}


@dataclass
class EpicStack:
    workdir: Path
    database_url: str
    broker_url: str = ""
    transcriber_factory: object = None
    generator_factory: object = None
    sweep_interval_s: float = 15.0
    queue: str = "chartbridge"
    in_process_worker: bool = True       # False: workers run as their own processes
    http_threads: int = 8                # waitress threads, as `chartbridge serve` defaults
    engine: Engine | None = None
    sim: EpicSimulator | None = None
    rt: runtime.Runtime | None = None
    engine_url: str | None = None
    _server: object = None
    _thread: threading.Thread | None = field(default=None, repr=False)

    def start(self) -> "EpicStack":
        self.workdir = Path(self.workdir).resolve()      # its file: key references are absolute
        self.sim = EpicSimulator(epic_client_id=EPIC_ISSUER)
        self.sim.start()
        keys, orgs = self.workdir / "keys", self.workdir / "orgs"
        path = write_org_config(orgs, keys, self.sim)
        key_id = yaml.safe_load(path.read_text())["targets"]["epic_haiku"]["key_id"]
        self.sim.register_client(CLIENT_ID, public_jwks(keys, key_id))
        self.engine = bootstrap(database_url=self.database_url, config_dir=orgs,
                                transcriber_factory=self.transcriber_factory,
                                generator_factory=self.generator_factory)
        self.rt = runtime.start(self.engine, broker_url=self.broker_url,
                                in_process_worker=self.in_process_worker,
                                sweep_interval_s=self.sweep_interval_s, queue=self.queue)
        from waitress.server import create_server
        app = create_app(self.engine, jobs=self.rt.jobs)
        self._server = create_server(app, host="127.0.0.1", port=0, threads=self.http_threads)
        self.engine_url = f"http://127.0.0.1:{self._server.effective_port}"
        app.config["CHARTBRIDGE_PUBLIC_URL"] = self.engine_url
        self._thread = threading.Thread(target=self._server.run, name="engine-http", daemon=True)
        self._thread.start()
        self.sim.engine_url = self.engine_url
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        if self.rt is not None:
            self.rt.stop()
        if self.sim is not None:
            self.sim.stop()
        if self.engine is not None:
            self.engine.db.dispose()

    def __enter__(self) -> "EpicStack":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- what the engine stored ------------------------------------------------------------
    def session(self, external_id: str):
        return self.engine.store.find_session(ORG, "epic_haiku", external_id)

    def ledger_rows(self, external_id: str | None = None):
        session = self.session(external_id) if external_id else None
        return self.engine.ledger.list(ORG, session_id=session.id if session else None)


def serve_processes(stack: EpicStack, n: int, log) -> tuple[list[subprocess.Popen], list[str]]:
    """n `chartbridge serve` processes on a started stack's database, org config and broker
    (the production web tier: several processes behind one proxy, so each answers for the
    stack's URL, the one Epic's tokens name as `aud`); their base URLs once each is ready.
    Output goes to `log` (an open file). Stop them with `stop_processes`."""
    if not stack.broker_url:
        raise ValueError("web processes share a broker; give the stack a broker_url")
    env = dict(os.environ, CHARTBRIDGE_DATABASE_URL=stack.database_url,
               CHARTBRIDGE_CONFIG_DIR=str(stack.workdir / "orgs"),
               CHARTBRIDGE_BROKER_URL=stack.broker_url, CHARTBRIDGE_QUEUE=stack.queue)
    procs, bases = [], []
    try:
        for _ in range(n):
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "chartbridge.cli", "serve", "--port", str(port),
                 "--no-sweeper", "--public-url", stack.engine_url],
                env=env, stdout=log, stderr=subprocess.STDOUT))
            bases.append(f"http://127.0.0.1:{port}")
        deadline = time.monotonic() + 60
        for proc, base in zip(procs, bases):
            while not _ready(base):
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"chartbridge serve did not come up (log: {log.name})")
                time.sleep(0.1)
    except BaseException:
        stop_processes(procs)
        raise
    return procs, bases


def _ready(base: str) -> bool:
    import httpx
    try:
        return httpx.get(f"{base}/readyz", timeout=2).status_code == 200
    except httpx.TransportError:
        return False


def stop_processes(procs: list[subprocess.Popen]) -> None:
    for proc in procs:
        proc.terminate()
    for proc in procs:
        proc.wait(30)
