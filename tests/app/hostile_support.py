"""An engine app with a configured Epic org, for hostile-input tests: the Epic simulator
publishes the JWKS and signs inbound tokens (the test's Epic key); requests go through
Flask's test client (Host: localhost, the app's default public URL)."""
from __future__ import annotations

import json
import uuid
from dataclasses import dataclass

import pytest
import yaml

from chartbridge.bootstrap import Engine, bootstrap
from chartbridge.web import create_app
from contract_tests.epic_haiku.simulator import EpicSimulator
from contract_tests.epic_haiku.stack import (CLIENT_ID, EPIC_ISSUER, ORG, public_jwks,
                                             write_org_config)

PUBLIC = "http://localhost"


@dataclass
class Hostile:
    engine: Engine
    sim: EpicSimulator
    app: object
    client: object

    def url(self, event: str) -> str:
        return f"/orgs/{ORG}/epic/ambient/{event}"

    def token(self, event: str, mode: str = "valid", org: str = ORG) -> str:
        return self.sim.make_inbound_token(f"{PUBLIC}/orgs/{org}/epic/ambient/{event}", org, mode)

    def post(self, event: str, body, *, token: str | None = "valid", raw: bytes | None = None,
             headers: dict | None = None):
        hdrs = dict(headers or {})
        if token is not None:
            hdrs["Authorization"] = "Bearer " + (self.token(event, token)
                                                 if token in MODES else token)
        data = raw if raw is not None else json.dumps(body).encode()
        return self.client.post(self.url(event), data=data, headers=hdrs,
                                content_type="application/json")

    def begin(self, session_id: str | None = None) -> str:
        sid = session_id or f"AMB-{uuid.uuid4().hex[:10]}"
        resp = self.post("AmbientSessionBegin", begin_body(sid))
        assert resp.status_code == 200, resp.json
        return sid


MODES = ("valid", "expired", "wrong_aud", "wrong_key", "wrong_iss", "too_long", "no_jti",
         "alg_none")


def begin_body(sid: str, **over) -> dict:
    body = {"SessionID": sid, "UserID": {"ID": "E1001", "Type": "EXTERNAL"},
            "PatientIDs": [{"ID": "Z4481", "Type": "MRN"}, {"ID": "eP1", "Type": "FHIR"}],
            "EncounterIDs": [{"ID": "300012345", "Type": "CSN"}, {"ID": "eE1", "Type": "FHIR"}],
            "CallbackURL": "http://127.0.0.1:9/Ambient/",
            "AllowedNoteSections": ["10164-2", "51847-2"]}
    body.update(over)
    return body


@pytest.fixture
def hostile(tmp_path, database_url):
    sim = EpicSimulator(epic_client_id=EPIC_ISSUER)
    sim.start()
    orgs = tmp_path / "orgs"
    path = write_org_config(orgs, tmp_path / "keys", sim)
    doc = yaml.safe_load(path.read_text())
    doc["targets"]["epic_haiku"]["fhir_base"] = sim.base_url + "/api/FHIR/R4"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    sim.register_client(CLIENT_ID, public_jwks(tmp_path / "keys", doc["targets"]["epic_haiku"]["key_id"]))
    engine = bootstrap(database_url=database_url, config_dir=orgs)
    app = create_app(engine)
    try:
        yield Hostile(engine, sim, app, app.test_client())
    finally:
        sim.stop()
        engine.db.dispose()


HAIKU_CLIENT = "demo-epic-haiku-page"      # launch_client_id in config/orgs/demo-epic.yaml


def smart_launch(h: Hostile, sid: str) -> str:
    """Run the Haiku page's SMART EHR launch for a begun session (Epic's authorize step on
    the simulator, the rest through the test client). Returns the page's path; the client
    then holds the page-session cookie."""
    import httpx

    h.sim.smart.register_app(HAIKU_CLIENT, [f"{PUBLIC}/orgs/{ORG}/epic/haiku/callback"])
    launch = h.sim.smart.new_launch(patient="eP1", encounter="eE1")
    start = h.client.get(f"/orgs/{ORG}/epic/haiku/launch", query_string={
        "session": sid, "iss": h.sim.smart.fhir_base, "launch": launch})
    assert start.status_code == 302, start.get_data(as_text=True)[:300]
    back = httpx.get(start.headers["Location"], follow_redirects=False)
    assert back.status_code == 302, back.text[:300]
    callback = back.headers["Location"]
    assert callback.startswith(PUBLIC)
    done = h.client.get(callback[len(PUBLIC):])
    assert done.status_code == 303, done.get_data(as_text=True)[:300]
    return done.headers["Location"].replace(PUBLIC, "")
