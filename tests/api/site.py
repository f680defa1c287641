"""A non-Epic site behind the capture API, for real: the FHIR, athenaOne and MDM
simulators, the demo's identity provider, the engine on waitress with its in-process
worker, and a capture client registered in the org file with its JWKS by file."""
from __future__ import annotations

import io
import json
import threading
import wave
from contextlib import ExitStack
from pathlib import Path

import yaml
from waitress.server import create_server

from chartbridge import runtime
from chartbridge.api.client import CaptureClient, new_client_key
from chartbridge.bootstrap import bootstrap
from chartbridge.config.loader import EXAMPLE_ORGS
from chartbridge.demo_idp import DemoIdP
from chartbridge.demo_sites import FHIR_ENCOUNTER, FHIR_PATIENT, ATHENA_PATIENT, _start_simulators
from chartbridge.web import create_app
from contract_tests.epic_haiku.stack import ChunkTranscriber
from tests.fakes import OneSection

ORG, OTHER = "api-clinic", "api-other"
CLIENT, READER = "capture-app", "read-only-app"
SECOND = "second-capture-app"              # another client of the same org, same scopes


def wav(seconds: float = 1.0, tone: int = 440) -> bytes:
    import math
    rate = 16_000
    frames = b"".join(int(8000 * math.sin(2 * math.pi * tone * i / rate)).to_bytes(2, "little", signed=True)
                      for i in range(int(rate * seconds)))
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(rate)
        w.writeframes(frames)
    return out.getvalue()


class ApiSite:
    def __init__(self, tmp_path: Path, database_url: str, *, orgs=(ORG, OTHER),
                 client_id: str = CLIENT) -> None:
        self.stack = ExitStack()
        self.workdir = tmp_path
        self.sims: dict = {}
        self.targets = _start_simulators(self.stack, tmp_path, self.sims)
        from chartbridge.api import auth
        from chartbridge.review import oidc
        # a new provider may get an earlier site's loopback port: forget what was cached
        auth._JWKS.clear()
        oidc._DISCOVERED.clear()
        self.idp = DemoIdP().start()
        self.stack.callback(self.idp.stop)
        folder = tmp_path / "orgs"
        folder.mkdir()
        self.keys = {}
        for org in orgs:
            clients = []
            for cid, scopes in ((client_id, ["capture", "read", "approve"]), (READER, ["read"]),
                                (SECOND, ["capture", "read", "approve"])):
                key, jwks = new_client_key()
                (folder / f"{org}-{cid}.jwks.json").write_text(json.dumps(jwks))
                self.keys[(org, cid)] = key
                clients.append({"client_id": cid, "jwks": f"file:{org}-{cid}.jwks.json",
                                "scopes": scopes})
            doc = yaml.safe_load((EXAMPLE_ORGS / "demo-multi.yaml").read_text())
            doc.update(org=org, name=f"Clinic {org}", targets=self.targets,
                       drafting={"generator": "rules", "template": "default"},
                       sign_in=self.idp.sign_in_block(), api={"clients": clients, "token_ttl_s": 300})
            (folder / f"{org}.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
        self.engine = bootstrap(database_url=database_url, config_dir=folder,
                                transcriber_factory=lambda org: ChunkTranscriber(),
                                generator_factory=lambda org: OneSection())
        self.rt = runtime.start(self.engine, sweep_interval_s=1.0)
        app = create_app(self.engine, jobs=self.rt.jobs)
        self.server = create_server(app, host="127.0.0.1", port=0, threads=8)
        self.url = f"http://127.0.0.1:{self.server.effective_port}"
        app.config["CHARTBRIDGE_PUBLIC_URL"] = self.url
        threading.Thread(target=self.server.run, daemon=True, name="api-http").start()

    def client(self, org: str = ORG, client_id: str = CLIENT, scopes: str | None = None):
        c = CaptureClient(self.url, org, client_id, self.keys[(org, client_id)])
        c.scopes = scopes if scopes is not None else (
            "read" if client_id == READER else "capture read approve")
        return c

    def clinician_token(self, sub: str = "clin-42", name: str = "Dr Okafor", *,
                        org: str = ORG, role: str | None = None, **kw) -> str:
        """A clinician's ID token from the orgs' shared provider: both orgs sign in with the
        same issuer and client id, so the role claim names the org (`<role>:<org>`)."""
        return self.idp.id_token(sub, name, role if role is not None else f"physician:{org}",
                                 **kw)

    def close(self) -> None:
        self.server.close()
        self.rt.stop()
        self.stack.close()
        self.engine.db.dispose()


def session_body(external_id: str) -> dict:
    return {"external_id": external_id,
            "user": {"value": "DR-7", "type": "EXTERNAL"},
            "patient_ids": [{"value": "Z4481", "type": "MRN", "system": "urn:demo:mrn"},
                            {"value": FHIR_PATIENT, "type": "FHIR"},
                            {"value": ATHENA_PATIENT, "type": "athena-patient"}],
            "encounter_ids": [{"value": "300012345", "type": "CSN"},
                              {"value": FHIR_ENCOUNTER, "type": "FHIR"}],
            "consent": {"capture": True, "write_back": True}}
