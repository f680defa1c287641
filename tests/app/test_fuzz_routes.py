"""Every inbound route under generated hostile input, on PostgreSQL: no answer is a 5xx.

Hypothesis draws each request: Epic's five callbacks (bodies mutated from valid ones or
random JSON or raw bytes; tokens valid, signed by the test's Epic key, or broken in each way
the simulator knows, or garbage), the Haiku page routes (with and without a real SMART
page session), the review pages (signed in by the dev login, with the real CSRF token or a
forged one), and org / path ids of any text. A failing example is shrunk and printed.

Budget: FUZZ_REQUESTS (default 2,200) requests in one run, about a minute here.
"""
from __future__ import annotations

import json
import os
import re
from collections import Counter
from urllib.parse import quote

import pytest
from hostile_support import MODES, ORG, begin_body, hostile, smart_launch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

__all__ = ["hostile"]

REQUESTS = int(os.environ.get("FUZZ_REQUESTS", "2200"))
EVENTS = ("AmbientSessionBegin", "RecordingChunkAvailable", "RecordingAvailable",
          "DocumentationUpdated", "AmbientSessionComplete")

# -- values ----------------------------------------------------------------------------------
nasty_text = st.one_of(
    st.text(max_size=20),
    st.text(min_size=100, max_size=300),
    st.sampled_from(["", " ", "\x00", "a\x00b", "\ud800", "\udfff", "../../etc", "%00",
                     "' OR 1=1 --", "<script>", "\u202e", "A" * 129, "1" * 33, "x" * 5000]),
    st.text(alphabet=st.characters(categories=["Cs", "Cc"]), min_size=1, max_size=5),
)
numbers = st.one_of(st.integers(), st.sampled_from([0, -1, 1, 2**31 - 1, 2**31, 2**63, -2**63,
                                                    10**30]),
                    st.floats(allow_nan=True, allow_infinity=True))
scalars = st.one_of(st.none(), st.booleans(), numbers, nasty_text)
json_values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(nasty_text, inner, max_size=4)), max_leaves=12)


def mostly(good, bad, odds: int = 5):
    """`good` (a value or strategy) about odds/(odds+1) of the time, else a draw of `bad`:
    enough valid values that the generator gets past the first check."""
    good = good if isinstance(good, st.SearchStrategy) else st.just(good)
    return st.sampled_from(range(odds + 1)).flatmap(lambda i: bad if i == 0 else good)


def nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


def template(event: str, sid: str) -> dict:
    if event == "AmbientSessionBegin":
        return begin_body(sid)
    if event == "RecordingChunkAvailable":
        return {"SessionID": sid, "RecordingID": "R1", "RecordingVersion": 1,
                "ChunkSequence": 1, "ContentType": "audio/wav", "DurationMs": 1000}
    if event == "RecordingAvailable":
        return {"SessionID": sid, "RecordingID": "R1", "RecordingVersion": 1,
                "ChunkCount": 1, "Status": "Paused"}
    if event == "DocumentationUpdated":
        return {"SessionID": sid, "Sections": [{"SectionID": "51847-2",
                                                "EditedBy": {"ID": "E1", "Type": "EXTERNAL"},
                                                "EditedInstant": "2026-11-21T15:04:05-06:00"}]}
    return {"SessionID": sid, "Reason": "Cancelled"}


def on_the_wire(text: str) -> str:
    """A header value as bytes would arrive: UTF-8 read as Latin-1, no line breaks."""
    return re.sub(r"[\r\n]", "", text.encode("utf-8", "surrogatepass").decode("latin-1"))


def quoted(text: str) -> str:
    """Percent-encoded as a client would send it (a lone surrogate as its raw bytes)."""
    return quote(text.encode("utf-8", "surrogatepass"), safe="")


def encode_pairs(pairs: dict) -> str:
    return "&".join(f"{quoted(k)}={quoted(v)}" for k, v in pairs.items())


def segment(values=nasty_text):
    return values.map(quoted)


# -- requests ---------------------------------------------------------------------------------
@st.composite
def epic_request(draw, known: list[str]):
    event = draw(mostly(st.sampled_from(EVENTS), nasty_text))
    sid = draw(mostly(st.sampled_from(known), nasty_text, odds=3))
    kind = draw(st.sampled_from(["mutated", "mutated", "mutated", "random", "raw", "deep"]))
    if kind == "mutated":
        body = template(event if event in EVENTS else "AmbientSessionBegin", sid)
        for _ in range(draw(st.integers(0, 3))):
            key = draw(st.one_of(st.sampled_from(sorted(body)), nasty_text) if body else nasty_text)
            if draw(st.booleans()) and key in body:
                del body[key]
            else:
                body[key] = draw(json_values)
        raw = json.dumps(body).encode()
    elif kind == "random":
        raw = json.dumps(draw(json_values)).encode()
    elif kind == "raw":
        raw = draw(st.binary(max_size=200))
    else:
        raw = (b'{"SessionID": "x", "UserID": ' + nested(draw(st.sampled_from(
            [9, 50, 999, 1001, 3000, 50_000]))) + b"}")
    token = draw(mostly("valid", st.one_of(st.sampled_from(MODES),
                           st.sampled_from(["", "Bearer", "Bearer a.b.c", "Basic x",
                                            "Bearer " + "W" * 10_000]),
                           nasty_text.map(lambda t: "Bearer " + on_the_wire(t))), odds=2))
    org = draw(mostly(ORG, segment()))
    return ("epic", event, org, raw, token)


@st.composite
def page_request(draw, page_path: str, known: list[str]):
    org = draw(mostly(ORG, segment()))
    route = draw(st.sampled_from(["launch", "callback", "page", "state", "own"]))
    if route == "own":
        return ("get", page_path, {}, None)
    if route == "launch":
        args = {name: draw(mostly(good, nasty_text, odds=2))
                for name, good in (("session", known[0]), ("iss", "http://127.0.0.1:9/fhir"),
                                   ("launch", "L1"))}
        return ("get", f"/orgs/{org}/epic/haiku/launch", args, None)
    if route == "callback":
        args = draw(st.dictionaries(st.sampled_from(["state", "code", "error"]), nasty_text,
                                    max_size=3))
        return ("get", f"/orgs/{org}/epic/haiku/callback", args, None)
    sid = draw(mostly(page_path.rsplit("/", 1)[-1], segment(), odds=2))
    suffix = "/state.json" if route == "state" else ""
    return ("get", f"/orgs/{org}/epic/haiku/sessions/{sid}{suffix}", {}, None)


@st.composite
def review_request(draw, draft_id: str, csrf: str):
    org = draw(mostly(ORG, segment()))
    draft = draw(mostly(draft_id, segment(), odds=2))
    base = f"/orgs/{org}/review"
    form_text = mostly(csrf, nasty_text, odds=2)
    route = draw(st.sampled_from(["login", "login_post", "oidc", "list", "draft", "writes",
                                  "edit", "decision"]))
    if route == "login":
        return ("get", f"{base}/login", {}, None)
    if route == "login_post":
        form = {"csrf_token": draw(form_text), "user_id": draw(nasty_text),
                "name": draw(nasty_text), "role": draw(st.one_of(st.just("physician"),
                                                                 nasty_text))}
        return ("post", f"{base}/login", {}, form)     # (the login form's cookie is gone)
    if route == "oidc":
        return ("get", f"{base}/oidc/callback",
                draw(st.dictionaries(st.sampled_from(["state", "code"]), nasty_text,
                                     max_size=2)), None)
    if route == "list":
        return ("get", f"{base}/", {}, None)
    if route == "draft":
        return ("get", f"{base}/drafts/{draft}", {"notice": draw(nasty_text)}, None)
    if route == "writes":
        return ("get", f"{base}/drafts/{draft}/writes.json", {}, None)
    if route == "edit":
        code = draw(mostly("10164-2", segment(), odds=2))
        return ("post", f"{base}/drafts/{draft}/sections/{code}", {},
                {"csrf_token": draw(form_text), "text": draw(nasty_text)})
    return ("post", f"{base}/drafts/{draft}/decision", {},
            {"csrf_token": draw(form_text),
             "decision": draw(mostly(st.sampled_from(["approved", "rejected"]), nasty_text)),
             "content_hash": draw(mostly("0" * 64, nasty_text, odds=2)),
             "reason": draw(nasty_text)})


misc_request = st.one_of(
    st.tuples(st.just("get"), st.sampled_from(["/healthz", "/readyz"]), st.just({}),
              st.none()),
    st.tuples(st.sampled_from(["get", "post"]), segment().map(lambda s: f"/orgs/{s}/{s}"),
              st.just({}), st.none()))


def dev_sign_in(h) -> str:
    page = h.client.get(f"/orgs/{ORG}/review/login")
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', page.get_data(as_text=True)).group(1)
    done = h.client.post(f"/orgs/{ORG}/review/login", data={
        "csrf_token": csrf, "user_id": "dr.fuzz", "name": "Dr Fuzz", "role": "physician"})
    assert done.status_code == 303, done.get_data(as_text=True)[:300]
    listing = h.client.get(f"/orgs/{ORG}/review/").get_data(as_text=True)
    return re.search(r'name="csrf_token" value="([^"]+)"', listing).group(1)


@pytest.mark.postgres
@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
def test_no_route_answers_5xx_under_generated_input(hostile, monkeypatch):
    from tests.browser.seed import seed_draft

    monkeypatch.setenv("CHARTBRIDGE_DEV_LOGIN", "1")
    h = hostile
    known = [h.begin() for _ in range(3)]
    page_path = smart_launch(h, known[0])
    draft = seed_draft(h.engine, ORG)
    csrf = dev_sign_in(h)
    statuses: Counter[int] = Counter()
    failures: list = []

    def send(req) -> int:
        if req[0] == "epic":
            _, event, org, raw, token = req
            headers = {}
            if token in MODES:
                headers["Authorization"] = "Bearer " + h.token(event if event in EVENTS
                                                               else "x", token, org=ORG)
            elif token:
                headers["Authorization"] = token
            resp = h.client.post(f"/orgs/{org}/epic/ambient/{quoted(event)}",
                                 data=raw, headers=headers, content_type="application/json")
            if org == ORG and event in EVENTS:
                body = resp.get_json(silent=True)
                assert isinstance(body, dict) and (set(body) == {"Error", "Detail"}
                                                   or body == {"Status": "Accepted"}), body
        else:
            method, path, args, form = req
            if args:
                path += "?" + encode_pairs(args)
            if form is None:
                resp = getattr(h.client, method)(path)
            else:
                resp = getattr(h.client, method)(
                    path, data=encode_pairs(form),
                    content_type="application/x-www-form-urlencoded")
        return resp.status_code

    @settings(max_examples=REQUESTS, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(st.data())
    def one_request(data):
        req = data.draw(st.one_of(epic_request(known), epic_request(known),
                                  page_request(page_path, known),
                                  review_request(draft.id, csrf), misc_request))
        status = send(req)
        statuses[status] += 1
        if status >= 500:
            failures.append((status, repr(req)[:300]))
        assert status < 500, req

    one_request()
    total = sum(statuses.values())
    print(f"fuzz: {total} requests, {sum(n for s, n in statuses.items() if s >= 500)} 5xx, "
          f"statuses {dict(sorted(statuses.items()))}")
    assert not failures
    assert total >= min(REQUESTS, 2000)
    assert statuses[200] > 50          # the generator reaches the accepting paths too
