"""A real HTTP receiver that checks every request with the Standard Webhooks reference
library (PyPI `standardwebhooks`, not our signer), and a site (the engine against the FHIR
and MLLP simulators) whose org file subscribes it. The engine's clock is a FrozenClock
started at the wall clock's now, so a test moves time by hand for backoff while the
receiver's 5-minute timestamp tolerance still holds."""
from __future__ import annotations

import base64
import json
import os
import threading
import time
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import yaml
from dramatiq.brokers.stub import StubBroker
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from chartbridge.bootstrap import bootstrap
from chartbridge.core.clock import FrozenClock
from chartbridge.jobs import Jobs
from contract_tests.fhir_docref.sandbox import SIM_SCOPES, demo_keypair
from contract_tests.fhir_docref.sandbox import demo_target_settings as fhir_settings
from contract_tests.fhir_docref.simulator import FhirSimulator
from contract_tests.hl7_mdm.sandbox import demo_target_settings as mllp_settings
from contract_tests.hl7_mdm.simulator import HL7MDMSimulator
from tests.fakes import EchoTranscriber, OneSection

REPO = Path(__file__).resolve().parents[2]
ORG = "demo-multi"
PATIENT, ENCOUNTER = "pat-1", "enc-1"
SECRET = "whsec_" + base64.b64encode(b"chartbridge-webhook-test-key-32b").decode()


class Receiver:
    """Accepts POSTs; each is verified by `standardwebhooks.Webhook(secret).verify`. A
    request that does not verify is answered 401 and kept in `rejected`."""

    def __init__(self, secret: str) -> None:
        self.webhook = Webhook(secret)
        self.received: list[dict] = []      # {"headers", "body", "event"}
        self.rejected: list[str] = []
        self.requests = 0                   # every POST, whatever it was answered
        self.hold = None                    # a threading.Event the handler waits on
        self.answer = 204
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self.port = 0

    def start(self) -> "Receiver":
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                with outer._lock:
                    outer.requests += 1
                if outer.hold is not None:
                    outer.hold.wait(10)
                headers = {k: v for k, v in self.headers.items()}
                try:
                    event = outer.webhook.verify(body, headers)
                except WebhookVerificationError as exc:
                    with outer._lock:
                        outer.rejected.append(str(exc))
                    self.send_response(401)
                    self.end_headers()
                    return
                with outer._lock:
                    status = outer.answer
                    if 200 <= status < 300:
                        outer.received.append({"headers": headers, "body": body,
                                               "event": event})
                self.send_response(status)
                self.end_headers()

            def log_message(self, *args):
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks"

    def events(self, type_: str | None = None) -> list[dict]:
        with self._lock:
            return [r["event"] for r in self.received
                    if type_ is None or r["event"]["type"] == type_]


def make_site(tmp_path, database_url, receiver, *, approval="required", max_attempts=3,
              events=None):
    fhir, mllp = FhirSimulator("us-core"), HL7MDMSimulator()
    fhir.start()
    mllp.start()
    fhir.add_patient(PATIENT)
    fhir.add_encounter(ENCOUNTER, PATIENT)
    pem, jwk = demo_keypair()
    key = tmp_path / "fhir.pem"
    key.write_text(pem)
    fhir.register_client("chartbridge-sim", jwk, scopes=SIM_SCOPES)
    secret = tmp_path / "webhook.secret"
    secret.write_text(SECRET + "\n")
    doc = yaml.safe_load((REPO / "config/orgs/demo-multi.yaml").read_text())
    doc["targets"] = {"fhir_docref": fhir_settings(fhir, key_ref=f"file:{key}"),
                      "hl7_mdm": mllp_settings(mllp)}
    doc["policy"].update(approval=approval, correction="append")
    doc["drafting"] = {"generator": "rules", "template": "default"}
    doc["webhooks"] = [{"id": "ops", "url": receiver.url, "secret": f"file:{secret}",
                        "events": events or ["draft.ready", "write.succeeded", "write.stale",
                                             "write.failed", "write.needs_reconciliation",
                                             "session.failed"],
                        "timeout_s": 2, "max_attempts": max_attempts}]
    (tmp_path / f"{ORG}.yaml").write_text(yaml.safe_dump(doc))
    clock = FrozenClock(datetime.now(timezone.utc))
    engine = bootstrap(database_url=database_url, config_dir=tmp_path, clock=clock,
                       transcriber_factory=lambda org: EchoTranscriber(),
                       generator_factory=lambda org: OneSection())
    return engine, Jobs(engine, StubBroker()), fhir, mllp


def wait_until(predicate, timeout=15.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met before the deadline"
        time.sleep(0.02)


def cli(*args: str, database_url: str) -> "subprocess.CompletedProcess":
    import subprocess

    env = dict(os.environ, CHARTBRIDGE_DATABASE_URL=database_url)
    return subprocess.run([str(REPO / ".venv/bin/chartbridge"), *args], capture_output=True,
                          text=True, env=env, timeout=60)


def body_text(receiver: Receiver) -> str:
    """What a receiver saw, less the signature (random base64, which may spell anything)."""
    return "\n".join(r["body"].decode() for r in receiver.received) + json.dumps(
        [{k: v for k, v in r["headers"].items() if k.lower() != "webhook-signature"}
         for r in receiver.received])
