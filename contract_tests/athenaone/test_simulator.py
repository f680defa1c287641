"""The athenaOne simulator enforces the published API rules it claims to model.
These talk to it over HTTP with httpx, the way an adapter would."""
from __future__ import annotations

import base64
import time

import httpx
import pytest

from chartbridge.core.errors import InputError
from contract_tests.athenaone.simulator import (
    DEFAULT_CLIENT_ID,
    DEFAULT_CLIENT_SECRET,
    DEFAULT_PRACTICE_ID,
    AthenaSimulator,
)

DOCS = f"/v1/{DEFAULT_PRACTICE_ID}/patients/1/documents/clinicaldocument"
NOTE = {"departmentid": "1", "documentsubclass": "CLINICALDOCUMENT_CONSULTNOTE",
        "documentdata": "Assessment and plan (synthetic).", "internalnote": "chartbridge:key-1",
        "providerid": "71", "observationdate": "11/21/2026", "observationtime": "14:05"}


class FakeClock:
    """Seconds that only move when a test says so."""

    def __init__(self) -> None:
        self.t = 1_000.0

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def sim(clock: FakeClock):
    with AthenaSimulator(clock=clock, qps_per_practice=1000) as s:
        yield s


@pytest.fixture
def http(sim: AthenaSimulator):
    with httpx.Client(base_url=sim.base_url, timeout=5) as c:
        yield c


def token(http: httpx.Client, client_id: str = DEFAULT_CLIENT_ID,
          secret: str = DEFAULT_CLIENT_SECRET) -> dict[str, str]:
    r = http.post("/oauth2/v1/token", auth=(client_id, secret),
                  data={"grant_type": "client_credentials"})
    assert r.status_code == 200, r.text
    return {"Authorization": f"Bearer {r.json()['access_token']}"}


# ------------------------------------------------------------------ token endpoint
def test_token_needs_valid_basic_client_auth(http: httpx.Client, sim: AthenaSimulator) -> None:
    # Given a registered client
    # When it asks with the wrong secret, with no client auth, then correctly
    wrong = http.post("/oauth2/v1/token", auth=(DEFAULT_CLIENT_ID, "nope"),
                      data={"grant_type": "client_credentials"})
    none = http.post("/oauth2/v1/token", data={"grant_type": "client_credentials",
                                               "client_id": DEFAULT_CLIENT_ID,
                                               "client_secret": DEFAULT_CLIENT_SECRET})
    good = http.post("/oauth2/v1/token", auth=(DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET),
                     data={"grant_type": "client_credentials",
                           "scope": "athena/service/Athenanet.MDP.*"})
    # Then only the Basic-authenticated request gets a one-hour bearer token
    assert wrong.status_code == 401 and wrong.json()["error"] == "invalid_client"
    assert none.status_code == 401 and none.json()["error"] == "invalid_client"
    assert good.status_code == 200
    body = good.json()
    assert body["token_type"] == "Bearer" and body["expires_in"] == 3600 and body["access_token"]
    assert sim.token_request_count() == 3 and sim.tokens_issued() == 1


def test_token_refuses_wrong_grant_and_unregistered_scope(http: httpx.Client) -> None:
    # Given a client registered for the MDP scope only
    auth = (DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET)
    # When it asks for another grant, no grant, or another scope
    grant = http.post("/oauth2/v1/token", auth=auth, data={"grant_type": "password"})
    missing = http.post("/oauth2/v1/token", auth=auth, data={})
    scope = http.post("/oauth2/v1/token", auth=auth,
                      data={"grant_type": "client_credentials", "scope": "system/Patient.read"})
    # Then each is a 400 with the OAuth error code
    assert (grant.status_code, grant.json()["error"]) == (400, "unsupported_grant_type")
    assert (missing.status_code, missing.json()["error"]) == (400, "invalid_request")
    assert (scope.status_code, scope.json()["error"]) == (400, "invalid_scope")


def test_token_request_rate_limit_answers_429_with_retry_after(clock: FakeClock) -> None:
    # Given the preview environment (5 token requests a minute)
    with AthenaSimulator(environment="preview", clock=clock) as sim, \
            httpx.Client(base_url=sim.base_url) as http:
        auth = (DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET)
        form = {"grant_type": "client_credentials"}
        # When a client asks six times within the minute
        codes = [http.post("/oauth2/v1/token", auth=auth, data=form).status_code
                 for _ in range(6)]
        limited = http.post("/oauth2/v1/token", auth=auth, data=form)
        # Then the sixth on is refused with 429 and told when to come back
        assert codes == [200] * 5 + [429]
        assert limited.status_code == 429 and int(limited.headers["Retry-After"]) >= 1
        # And once the minute has passed it is served again
        clock.advance(61)
        assert http.post("/oauth2/v1/token", auth=auth, data=form).status_code == 200


def test_token_expires_after_its_lifetime(clock: FakeClock) -> None:
    # Given tokens that live 30 seconds
    with AthenaSimulator(clock=clock, token_ttl_s=30) as sim, \
            httpx.Client(base_url=sim.base_url) as http:
        headers = token(http)
        assert http.get(DOCS, headers=headers, params={"departmentid": "1"}).status_code == 200
        # When 31 seconds pass
        clock.advance(31)
        r = http.get(DOCS, headers=headers, params={"departmentid": "1"})
        # Then the same token is refused as expired
        assert r.status_code == 401 and r.json()["error"] == "Invalid Access Token"
        assert "invalid_token" in r.headers["WWW-Authenticate"]


def test_token_from_another_practice_is_refused_and_nothing_stored(
        http: httpx.Client, sim: AthenaSimulator) -> None:
    # Given a token for the second practice's client
    other = token(http, "sim-client-2", "sim-secret-2")
    # When it is used on the default practice's upload route, and with no token at all
    r = http.post(DOCS, headers=other, data=NOTE)
    anonymous = http.post(DOCS, data=NOTE)
    # Then athena's "Incorrect permissions." 401 comes back and no document exists
    assert r.status_code == 401
    assert r.json() == {"error": "Incorrect permissions.", "detailedmessage": "Bad auth."}
    assert anonymous.status_code == 401
    assert sim.documents() == [] and sim.upload_count() == 0


# ------------------------------------------------------------------ clinical documents
def test_upload_stores_the_document_and_listing_returns_it(
        http: httpx.Client, sim: AthenaSimulator) -> None:
    # Given a valid token
    headers = token(http)
    # When a text clinical document is uploaded
    r = http.post(DOCS, headers=headers, data=NOTE)
    # Then athena's success body comes back and the document is stored as sent
    assert r.status_code == 200
    body = r.json()
    assert body["success"] is True and isinstance(body["clinicaldocumentid"], int)
    [stored] = sim.documents(patientid="1")
    assert stored["clinicaldocumentid"] == body["clinicaldocumentid"]
    assert stored["documentdata"] == NOTE["documentdata"]
    assert stored["internalnote"] == "chartbridge:key-1"
    assert (stored["observationdate"], stored["observationtime"]) == ("11/21/2026", "14:05")
    assert stored["status"] == "REVIEW"
    # And the department listing shows it with its internal note; other filters exclude it
    listed = http.get(DOCS, headers=headers, params={"departmentid": "1"}).json()
    assert listed["totalcount"] == 1
    assert listed["clinicaldocuments"][0]["internalnote"] == "chartbridge:key-1"
    other_dept = http.get(DOCS, headers=headers, params={"departmentid": "150"}).json()
    assert other_dept["totalcount"] == 0
    one = http.get(f"{DOCS}/{body['clinicaldocumentid']}", headers=headers)
    assert one.status_code == 200 and one.json()[0]["documentsubclass"] == NOTE["documentsubclass"]


def test_pdf_attachment_is_decoded_and_autoclose_closes_it(
        http: httpx.Client, sim: AthenaSimulator) -> None:
    # Given a PDF as base64, multipart-encoded as some clients send it
    pdf = b"%PDF-1.4 synthetic"
    form = {"departmentid": "150", "documentsubclass": "CLINICALDOCUMENT_ADMISSIONDISCHARGE",
            "attachmentcontents": base64.b64encode(pdf).decode(), "attachmenttype": "PDF",
            "autoclose": "true"}
    # When it is uploaded
    r = http.post(DOCS, headers=token(http), data=form, files={"unused": ("x", b"")})
    # Then the exact bytes and type are stored and the document skipped the inbox
    assert r.json()["success"] is True
    [stored] = sim.documents()
    assert stored["attachment_bytes"] == pdf and stored["attachmenttype"] == "PDF"
    assert stored["status"] == "CLOSED" and stored.get("documentdata") is None


def test_missing_required_fields_are_named(http: httpx.Client, sim: AthenaSimulator) -> None:
    # When an upload lacks departmentid and documentsubclass
    r = http.post(DOCS, headers=token(http), data={"documentdata": "x"})
    # Then athena's 400 lists both missing fields, and nothing is stored
    assert r.status_code == 400
    assert r.json()["error"] == "Additional fields are required."
    assert sorted(r.json()["missingfields"]) == ["departmentid", "documentsubclass"]
    assert sim.documents() == []


@pytest.mark.parametrize("field,value,status", [
    ("observationdate", "2026-11-21", 400),
    ("observationtime", "2:05pm", 400),
    ("documentsubclass", "ENCOUNTERDOCUMENT_PROGRESSNOTE", 400),
    ("priority", "7", 400),
    ("providerid", "abc", 400),
    ("departmentid", "999", 400),
])
def test_bad_field_values_are_refused_naming_the_field(
        http: httpx.Client, sim: AthenaSimulator, field: str, value: str, status: int) -> None:
    # When one field has a value athena does not accept
    r = http.post(DOCS, headers=token(http), data={**NOTE, field: value})
    # Then a 400 names that field and nothing is stored
    assert r.status_code == status
    assert field in r.json()["error"]
    assert sim.documents() == []


def test_unknown_patient_is_404(http: httpx.Client, sim: AthenaSimulator) -> None:
    r = http.post(f"/v1/{DEFAULT_PRACTICE_ID}/patients/99999/documents/clinicaldocument",
                  headers=token(http), data=NOTE)
    assert r.status_code == 404 and "patient" in r.json()["error"].lower()
    assert sim.documents() == []


@pytest.mark.parametrize("form,message", [
    ({"documentdata": ""}, "Either documentdata or attachmentcontents"),
    ({"documentdata": "", "attachmentcontents": "***not base64***", "attachmenttype": "PDF"},
     "Base64"),
    ({"documentdata": "", "attachmentcontents": base64.b64encode(b"x").decode(),
      "attachmenttype": "EXE"}, "not supported"),
])
def test_unusable_content_gets_200_with_success_false(
        http: httpx.Client, sim: AthenaSimulator, form: dict[str, str], message: str) -> None:
    # When the upload passes field checks but its content cannot be filed
    r = http.post(DOCS, headers=token(http), data={**NOTE, **form})
    # Then athena answers 200 with success false and a message, and nothing is stored
    assert r.status_code == 200
    assert r.json()["success"] is False and message in r.json()["errormessage"]
    assert sim.documents() == [] and sim.upload_count() == 0


# ------------------------------------------------------------------ quota and faults
@pytest.mark.parametrize("retry_after", [1, None])
def test_per_second_quota_answers_429_with_or_without_retry_after(
        clock: FakeClock, retry_after: int | None) -> None:
    # Given a practice quota of 3 requests a second
    with AthenaSimulator(clock=clock, qps_per_practice=3, quota_retry_after=retry_after) as sim, \
            httpx.Client(base_url=sim.base_url) as http:
        headers = token(http)
        # When 5 requests arrive within the same second (the clock does not move)
        codes = [http.get(DOCS, headers=headers, params={"departmentid": "1"})
                 for _ in range(5)]
        # Then the first 3 pass and the rest get 429, with Retry-After only if configured
        assert [r.status_code for r in codes] == [200, 200, 200, 429, 429]
        assert ("Retry-After" in codes[-1].headers) is (retry_after is not None)
        assert sim.max_requests_per_second(DEFAULT_PRACTICE_ID) == 5
        # And the next second is served again
        clock.advance(1.5)
        assert http.get(DOCS, headers=headers, params={"departmentid": "1"}).status_code == 200


def test_injected_503s_then_success(http: httpx.Client, sim: AthenaSimulator) -> None:
    # Given two 503s queued on upload
    headers = token(http)
    sim.faults.add(call="upload", status=503, times=2, retry_after=2)
    # When the client sends three times
    answers = [http.post(DOCS, headers=headers, data=NOTE) for _ in range(3)]
    # Then the first two fail with Retry-After and store nothing; the third is filed once
    assert [a.status_code for a in answers] == [503, 503, 200]
    assert answers[0].headers["Retry-After"] == "2"
    assert sim.upload_count() == 1
    assert [c["status"] for c in sim.calls("upload")] == [503, 503, 200]


def test_an_any_fault_until_cleared_hits_api_calls_but_not_the_token_endpoint(
        http: httpx.Client, sim: AthenaSimulator) -> None:
    # Given a 503 on "any" call until cleared
    sim.faults.add(call="any", status=503, times=None)
    # When a token is fetched  Then the token endpoint is spared
    headers = token(http)
    # When API calls follow  Then every one meets the fault, counted, until it is cleared
    codes = [http.get(DOCS, headers=headers, params={"departmentid": "1"}).status_code
             for _ in range(3)]
    assert codes == [503, 503, 503]
    assert [(f["times"], f["fired"]) for f in sim.faults.pending()] == [(None, 3)]
    assert http.delete("/_sim/faults").status_code == 200
    assert http.get(DOCS, headers=headers, params={"departmentid": "1"}).status_code == 200


def test_lose_response_stores_then_answers_502(http: httpx.Client, sim: AthenaSimulator) -> None:
    # Given the next upload's answer will be lost after athena files it
    headers = token(http)
    sim.faults.add(call="upload", kind="lose_response")
    # When the client uploads
    r = http.post(DOCS, headers=headers, data=NOTE)
    # Then it sees 502 but the document exists and can be found by its internal note
    assert r.status_code == 502
    assert sim.upload_count() == 1
    listed = http.get(DOCS, headers=headers, params={"departmentid": "1"}).json()
    assert [d["internalnote"] for d in listed["clinicaldocuments"]] == ["chartbridge:key-1"]


def test_lose_response_can_drop_the_connection(http: httpx.Client, sim: AthenaSimulator) -> None:
    headers = token(http)
    sim.faults.add(call="upload", kind="lose_response", status=0)
    with pytest.raises(httpx.RemoteProtocolError):
        http.post(DOCS, headers=headers, data=NOTE)
    assert sim.upload_count() == 1
    assert sim.calls("upload")[-1]["status"] == "dropped"


def test_drop_before_processing_stores_nothing(http: httpx.Client, sim: AthenaSimulator) -> None:
    headers = token(http)
    sim.faults.add(call="upload", kind="drop")
    with pytest.raises(httpx.RemoteProtocolError):
        http.post(DOCS, headers=headers, data=NOTE)
    assert sim.upload_count() == 0


def test_expired_token_and_success_false_faults(http: httpx.Client, sim: AthenaSimulator) -> None:
    headers = token(http)
    sim.faults.add(call="upload", kind="expired_token")
    sim.faults.add(call="upload", kind="success_false", errormessage="Chart is locked.")
    expired = http.post(DOCS, headers=headers, data=NOTE)
    refused = http.post(DOCS, headers=headers, data=NOTE)
    assert expired.status_code == 401 and expired.json()["error"] == "Invalid Access Token"
    assert refused.status_code == 200
    assert refused.json() == {"success": False, "errormessage": "Chart is locked."}
    assert sim.upload_count() == 0


def test_slow_fault_delays_the_answer(http: httpx.Client, sim: AthenaSimulator) -> None:
    headers = token(http)
    sim.faults.add(call="list", delay_s=0.3)
    started = time.perf_counter()
    r = http.get(DOCS, headers=headers, params={"departmentid": "1"})
    assert r.status_code == 200 and time.perf_counter() - started >= 0.3


def test_token_endpoint_429_storm(http: httpx.Client, sim: AthenaSimulator) -> None:
    sim.faults.add(call="token", status=429, times=3, retry_after=1)
    auth = (DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET)
    codes = [http.post("/oauth2/v1/token", auth=auth,
                       data={"grant_type": "client_credentials"}).status_code for _ in range(4)]
    assert codes == [429, 429, 429, 200]


def test_bad_fault_options_name_the_field(sim: AthenaSimulator) -> None:
    with pytest.raises(InputError) as err:
        sim.faults.add(call="uploads", status=503)
    assert err.value.field == "call"


# ------------------------------------------------------------------ HTTP controls, lifecycle
def test_http_controls(http: httpx.Client, sim: AthenaSimulator) -> None:
    # Given a fault and a document set up over /_sim
    assert http.post("/_sim/faults", json={"call": "list", "status": 500}).status_code == 201
    bad = http.post("/_sim/faults", json={"call": "list", "colour": "red"})
    assert bad.status_code == 400 and bad.json()["field"] == "colour"
    headers = token(http)
    assert http.get(DOCS, headers=headers, params={"departmentid": "1"}).status_code == 500
    http.post(DOCS, headers=headers, data=NOTE)
    # Then documents, calls and state are inspectable as JSON
    docs = http.get("/_sim/documents", params={"patientid": "1"}).json()["documents"]
    assert len(docs) == 1 and docs[0]["internalnote"] == "chartbridge:key-1"
    state = http.get("/_sim/state").json()
    assert state["uploads"] == 1 and state["token_requests"] == 1
    assert http.post("/_sim/config", json={"qps_per_practice": "many"}).status_code == 400
    # And reset empties everything
    assert http.post("/_sim/reset").status_code == 200
    assert sim.documents() == [] and sim.token_request_count() == 0


def test_stop_frees_the_port_even_during_a_slow_answer() -> None:
    sim = AthenaSimulator()
    base = sim.start()
    sim.faults.add(call="token", delay_s=30)
    with httpx.Client(base_url=base, timeout=10) as http:
        import threading

        def slow() -> None:
            try:
                http.post("/oauth2/v1/token", auth=(DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET),
                          data={"grant_type": "client_credentials"})
            except httpx.HTTPError:
                pass

        t = threading.Thread(target=slow)
        t.start()
        deadline = time.monotonic() + 5
        while sim.token_request_count() == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        started = time.perf_counter()
        sim.stop()
        t.join(timeout=5)
        assert time.perf_counter() - started < 5 and not t.is_alive()
    with pytest.raises(httpx.ConnectError):
        httpx.get(base + "/_sim/state", timeout=2)


def test_ping_is_practice_scoped(http: httpx.Client) -> None:
    # Given a token for the default practice
    headers = token(http)
    # When it pings its own practice, another practice and a practice that does not exist
    own = http.get(f"/v1/{DEFAULT_PRACTICE_ID}/ping", headers=headers)
    other = http.get("/v1/195901/ping", headers=headers)
    missing = http.get("/v1/4242/ping", headers=headers)
    # Then athena's documented answers come back
    assert (own.status_code, own.json()) == (200, {"pong": "true"})
    assert (other.status_code, other.json()["error"]) == (401, "Incorrect permissions.")
    assert (missing.status_code, missing.json()["error"]) == (404, "Invalid practice.")


def test_concurrent_uploads_get_distinct_ids_and_are_all_stored(
        http: httpx.Client, sim: AthenaSimulator) -> None:
    # Given one token shared by 8 threads
    import concurrent.futures

    headers = token(http)

    def upload(i: int) -> int:
        with httpx.Client(base_url=sim.base_url, timeout=10) as c:
            r = c.post(DOCS, headers=headers, data={**NOTE, "internalnote": f"k-{i}"})
            assert r.status_code == 200
            return r.json()["clinicaldocumentid"]

    # When 24 uploads run at once
    with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
        ids = list(pool.map(upload, range(24)))
    # Then every upload got its own id and every one is stored exactly once
    assert len(set(ids)) == 24
    assert sorted(d["internalnote"] for d in sim.documents()) == sorted(f"k-{i}" for i in range(24))
    assert sim.state()["internal_errors"] == []


def test_core_frozen_clock_drives_token_expiry() -> None:
    from chartbridge.core.clock import FrozenClock

    clock = FrozenClock()
    with AthenaSimulator(clock=clock, token_ttl_s=60) as sim, \
            httpx.Client(base_url=sim.base_url) as http:
        headers = token(http)
        clock.advance(61)
        r = http.get(f"/v1/{DEFAULT_PRACTICE_ID}/ping", headers=headers)
        assert r.status_code == 401
