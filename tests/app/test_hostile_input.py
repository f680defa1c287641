"""The inputs that answered 500 in the issue-20 probe, one test each: every one must now get
a 4xx (or 503 when the database is gone) in the surface's own error shape, naming the field
and echoing nothing."""
from __future__ import annotations

import base64
import json

import pytest
from hostile_support import ORG, begin_body, hostile

__all__ = ["hostile"]


def epic_error(resp, status: int, field_word: str | None = None) -> dict:
    assert resp.status_code == status, (resp.status_code, resp.get_data(as_text=True)[:300])
    body = resp.get_json()
    assert set(body) == {"Error", "Detail"}, body          # Epic's shape, nothing else
    if field_word:
        assert field_word in body["Detail"], body
    return body


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


# -- the bearer token -------------------------------------------------------------------------
@pytest.mark.parametrize("header", [b"[" * 5000 + b"]" * 5000,
                                    b'{"alg":"RS384","kid":' + b"[" * 200 + b"]" * 200 + b"}",
                                    b"[" * 300 + b"]" * 300])
def test_deeply_nested_jwt_header_is_401_not_recursion(hostile, header):
    token = f"{b64(header)}.{b64(b'{}')}.sig"
    resp = hostile.post("AmbientSessionBegin", begin_body("AMB-1"), token=token)
    epic_error(resp, 401)


def test_oversized_bearer_token_is_401_before_decoding(hostile):
    token = f"{b64(b'{' * 2)}.{'a' * 20_000}.sig"
    epic_error(hostile.post("AmbientSessionBegin", begin_body("AMB-1"), token=token), 401)


def test_signed_token_with_unusable_jti_is_401(hostile):
    from joserfc import jwt
    sim = hostile.sim
    url = "http://localhost" + hostile.url("AmbientSessionBegin")
    now = int(sim.clock())
    def signed(jti: str) -> str:
        claims = {"iss": "demo-epic-interconnect", "aud": url, "iat": now, "exp": now + 60,
                  "jti": jti}
        return jwt.encode({"alg": "RS384", "kid": sim._key.kid}, claims, sim._key,
                          algorithms=["RS384"])

    for jti in ("x" * 201, "a\x00b"):
        epic_error(hostile.post("AmbientSessionBegin", begin_body("AMB-1"), token=signed(jti)),
                   401)
    # the same token with a usable jti is accepted: the refusal above is the jti's
    assert hostile.post("AmbientSessionBegin", begin_body("AMB-1"),
                        token=signed("ok-1")).status_code == 200


# -- NUL in the org path ------------------------------------------------------------------------
@pytest.mark.parametrize("path", [
    "/orgs/demo%00epic/epic/haiku/launch?session=a&iss=b&launch=c",
    "/orgs/demo%00epic/epic/haiku/callback?state=x&code=y",
    "/orgs/demo%00epic/epic/haiku/sessions/abc",
    "/orgs/demo%00epic/epic/haiku/sessions/abc/state.json",
    "/orgs/demo%00epic/review/oidc/callback?state=x",
    "/orgs/demo%00epic/review/login",
    "/orgs/demo%00epic/review/drafts/d1",
    f"/orgs/{ORG}/review/drafts/d%001",
    f"/orgs/{ORG}/epic/haiku/sessions/s%001/state.json",
])
def test_nul_in_path_ids_is_404_before_any_lookup(hostile, path):
    hostile.client.set_cookie("cb_haiku", "abc", path="/")
    hostile.client.set_cookie("cb_review", "abc", path="/")
    resp = hostile.client.get(path)
    assert resp.status_code == 404, (path, resp.status_code)


def test_nul_in_org_on_epic_route_is_404_in_epic_shape(hostile):
    resp = hostile.client.post("/orgs/demo%00epic/epic/ambient/AmbientSessionBegin", data=b"{}",
                               content_type="application/json")
    epic_error(resp, 404)


def test_nul_in_query_parameters_is_400_naming_the_parameter(hostile):
    resp = hostile.client.get(f"/orgs/{ORG}/epic/haiku/launch?session=a%00b&iss=x&launch=y")
    assert resp.status_code == 400 and b"session" in resp.data


# -- Epic bodies on the database ----------------------------------------------------------------
def test_over_long_session_id_is_400_naming_it(hostile):
    resp = hostile.post("AmbientSessionBegin", begin_body("A" * 129))
    epic_error(resp, 400, "SessionID")


def test_nul_in_session_id_is_400_naming_it(hostile):
    epic_error(hostile.post("AmbientSessionBegin", begin_body("AMB\x00X")), 400, "SessionID")


def test_lone_surrogate_is_400(hostile):
    raw = json.dumps(begin_body("AMB-S")).replace("AMB-S", "AMB-\\ud800").encode()
    epic_error(hostile.post("AmbientSessionBegin", None, raw=raw), 400, "SessionID")


def test_nan_is_not_json(hostile):
    raw = b'{"SessionID": "AMB-N", "RecordingID": "R1", "RecordingVersion": NaN}'
    epic_error(hostile.post("RecordingChunkAvailable", None, raw=raw), 400, "JSON")


@pytest.mark.parametrize("field,value", [("RecordingID", "R" * 129),
                                         ("ContentType", "audio/" + "x" * 80),
                                         ("RecordingVersion", 2**31),
                                         ("ChunkSequence", 2**31),
                                         ("DurationMs", 2**31),
                                         ("RecordingID", "R\x001")])
def test_chunk_fields_past_their_columns_are_400(hostile, field, value):
    sid = hostile.begin()
    body = {"SessionID": sid, "RecordingID": "R1", "RecordingVersion": 1, "ChunkSequence": 1,
            "ContentType": "audio/wav", "DurationMs": 1000, field: value}
    epic_error(hostile.post("RecordingChunkAvailable", body), 400, field)


def test_chunk_count_past_int32_is_400(hostile):
    sid = hostile.begin()
    body = {"SessionID": sid, "RecordingID": "R1", "RecordingVersion": 1,
            "ChunkCount": 2**31, "Status": "Paused"}
    epic_error(hostile.post("RecordingAvailable", body), 400, "ChunkCount")


def test_over_long_section_id_is_400(hostile):
    sid = hostile.begin()
    body = {"SessionID": sid, "Sections": [{"SectionID": "1" * 33}]}
    epic_error(hostile.post("DocumentationUpdated", body), 400, "Sections[0].SectionID")


@pytest.mark.parametrize("depth", [40, 1200, 100_000])
def test_deep_nesting_is_refused(hostile, depth):
    raw = b'{"SessionID": "AMB-D", "CareContext": ' + b"[" * depth + b"]" * depth + b"}"
    resp = hostile.post("AmbientSessionBegin", None, raw=raw)
    assert resp.status_code in (400, 413)
    epic_error(resp, resp.status_code)


# -- unbounded input ------------------------------------------------------------------------------
def test_ten_megabyte_begin_with_250000_patient_ids_is_413(hostile):
    ids = [{"ID": f"Z{i}", "Type": "MRN"} for i in range(250_000)]
    raw = json.dumps(begin_body("AMB-BIG", PatientIDs=ids)).encode()
    assert len(raw) > 8 * 1024 * 1024
    body = epic_error(hostile.post("AmbientSessionBegin", None, raw=raw), 413)
    assert "body" in body["Detail"] or "large" in body["Detail"]


def test_too_many_identifiers_in_a_small_body_is_413_naming_the_field(hostile):
    ids = [{"ID": f"Z{i}", "Type": "MRN"} for i in range(21)]
    resp = hostile.post("AmbientSessionBegin", begin_body("AMB-MANY", PatientIDs=ids))
    epic_error(resp, 413, "PatientIDs")


def test_limits_come_from_the_org_config(hostile):
    import yaml
    path = hostile.engine.config_dir / f"{ORG}.yaml"
    doc = yaml.safe_load(path.read_text())
    doc["targets"]["epic_haiku"]["limits"] = {"max_identifiers": 30}
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    ids = [{"ID": f"Z{i}", "Type": "MRN"} for i in range(25)] + [{"ID": "eP1", "Type": "FHIR"}]
    resp = hostile.post("AmbientSessionBegin", begin_body("AMB-CFG", PatientIDs=ids))
    assert resp.status_code == 200, resp.get_json()


# -- the database gone ----------------------------------------------------------------------------
def test_database_unreachable_is_503_with_retry_after_in_epic_shape(hostile):
    from sqlalchemy.orm import sessionmaker

    from chartbridge.ledger.db import make_engine

    dead = make_engine("postgresql://nobody@127.0.0.1:1/none", connect_args={"connect_timeout": 1})
    hostile.engine.db.engine, hostile.engine.db._factory = dead, sessionmaker(dead)
    resp = hostile.post("AmbientSessionBegin", begin_body("AMB-DOWN"))
    epic_error(resp, 503)
    assert int(resp.headers["Retry-After"]) > 0
    hostile.client.set_cookie("cb_haiku", "x", path="/")
    page = hostile.client.get(f"/orgs/{ORG}/epic/haiku/sessions/abc")
    assert page.status_code == 503 and page.headers["Retry-After"]
