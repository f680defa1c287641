"""What the capture API refuses, and what a refusal leaves behind (SQLite and PostgreSQL):
a clinician token that is not this org's, not fresh or not its provider's; an approval that
could not be written; an Idempotency-Key answer held for the wrong caller, or stored for
a refusal or an outage; a bearer token whose client was removed."""
from __future__ import annotations

import time
import uuid

import httpx
import yaml

from chartbridge.api import auth
from chartbridge.review import oidc
from tests.api.site import CLIENT, ORG, OTHER, SECOND, session_body, wav

CLINICIAN = "X-Clinician-Token"


def _draft(site, c, external_id, consent=None):
    body = session_body(external_id)
    if consent is not None:
        body["consent"] = consent
    r = c.post("/sessions", body)
    assert r.status_code == 201, r.text
    sid = r.json()["id"]
    assert c.put_chunk(sid, 1, 1, wav(1.0)).status_code == 200
    r = c.post(f"/sessions/{sid}/recordings/1", {"status": "Stopped", "chunk_count": 1})
    assert r.status_code == 202, r.text
    c.wait(f"/sessions/{sid}", lambda b: b["drafts"], timeout=60, what="the draft")
    draft = c.get(f"/sessions/{sid}/drafts/1").json()
    return sid, draft, {"decision": "approved", "content_hash": draft["content_hash"]}


def _undecided(site, sid):
    assert site.engine.store.drafts(ORG, session_id=sid)[0][1] == "draft"
    assert site.engine.ledger.list(ORG, session_id=sid) == []


# -- 1. the clinician token is this org's, its provider's, and fresh ----------------------
def test_clinician_token_of_another_org_issuer_or_age_is_refused(site):
    c = site.client()
    sid, draft, body = _draft(site, c, "BIND-1")
    url = f"/sessions/{sid}/drafts/1/approval"
    # both orgs sign in with one provider and client id: org B's clinician is not org A's
    other_org = c.post(url, body, **{CLINICIAN: site.clinician_token(org=OTHER)})
    assert other_org.status_code == 403, other_org.text
    assert other_org.json()["error"] == "forbidden" and other_org.json()["field"] == CLINICIAN
    unbound = c.post(url, body, **{CLINICIAN: site.clinician_token(role="physician")})
    assert unbound.status_code == 403 and unbound.json()["field"] == CLINICIAN
    # signed by the org's provider key but issued by someone else
    elsewhere = site.idp.id_token("clin-42", "Dr Okafor", f"physician:{ORG}",
                                  iss="https://idp.elsewhere.example")
    assert c.post(url, body, **{CLINICIAN: elsewhere}).status_code == 401
    # another provider altogether (its own key and issuer, the same client id)
    from chartbridge.demo_idp import DemoIdP
    stranger = DemoIdP().start()
    try:
        foreign = stranger.id_token("clin-42", "Dr Okafor", f"physician:{ORG}")
        r = c.post(url, body, **{CLINICIAN: foreign})
        assert r.status_code == 401 and r.json()["field"] == CLINICIAN
    finally:
        stranger.stop()
    # not expired, but signed in 10 minutes ago: an approval needs a fresh sign-in
    stale = site.clinician_token(iat=int(time.time()) - 600, ttl_s=3600)
    r = c.post(url, body, **{CLINICIAN: stale})
    assert r.status_code == 401 and "minutes" in r.json()["detail"], r.text
    _undecided(site, sid)
    ok = c.post(url, body, **{CLINICIAN: site.clinician_token()})
    assert ok.status_code == 200, ok.text
    assert ok.json()["approver"]["role"] == "physician"          # the role, not the org


def test_jwks_is_refetched_only_for_an_unknown_kid_and_not_more_than_once_a_while(
        site, monkeypatch):
    c = site.client()
    sid, draft, body = _draft(site, c, "JWKS-1")
    url = f"/sessions/{sid}/drafts/1/approval"
    fetches = []
    real = auth._fetch_jwks
    monkeypatch.setattr(auth, "_fetch_jwks", lambda e, uri: fetches.append(uri) or real(e, uri))
    good = site.clinician_token()
    head, claims, sig = good.split(".")
    tampered = ".".join([head, claims, sig[:-4] + ("AAAA" if sig[-4:] != "AAAA" else "BBBB")])
    from chartbridge.demo_idp import DemoIdP
    forger = DemoIdP()                                  # an unknown kid, same issuer
    forger.issuer = site.idp.issuer
    assert c.post(url, body, **{CLINICIAN: site.clinician_token(role="x")}).status_code == 403
    fetches.clear()                                     # the keys are cached now
    for _ in range(5):
        assert c.post(url, body, **{CLINICIAN: tampered}).status_code == 401
        forged = forger.id_token("clin-42", "Dr Okafor", f"physician:{ORG}")
        assert c.post(url, body, **{CLINICIAN: forged}).status_code == 401
    assert fetches == []                  # a known kid never refetches; unknown: rate-limited
    # the provider rotates its key: one refetch (once the rate limit allows) finds it
    monkeypatch.setattr(auth, "REFETCH_MIN_S", 0)
    from joserfc.jwk import RSAKey
    site.idp.key = RSAKey.generate_key(2048, private=True)
    site.idp.key.ensure_kid()
    ok = c.post(url, body, **{CLINICIAN: site.clinician_token()})
    assert ok.status_code == 200, ok.text
    assert len(fetches) == 1


# -- 2. refusals and outages are not stored under the Idempotency-Key ---------------------
def test_refused_clinician_and_provider_outage_are_not_stored_under_the_key(site, monkeypatch):
    from chartbridge.api.idempotency import _store

    c = site.client()
    sid, draft, body = _draft(site, c, "NOSTORE-1")
    url = f"/sessions/{sid}/drafts/1/approval"
    key = uuid.uuid4().hex
    alone = c.post(url, body, key=key)
    assert alone.status_code == 401 and alone.json()["field"] == CLINICIAN
    bad = c.post(url, body, key=key, **{CLINICIAN: "not-a-token"})
    assert bad.status_code == 401
    assert _store(site.engine).get(ORG, key) is None
    # the provider's JWKS unreachable: 503 with Retry-After, not a 401, and not stored
    doc = dict(oidc._DISCOVERED[site.idp.issuer][1], jwks_uri="http://127.0.0.1:9/jwks")
    monkeypatch.setitem(oidc._DISCOVERED, site.idp.issuer, (time.monotonic(), doc))
    monkeypatch.setattr(auth, "_JWKS", {})
    down = c.post(url, body, key=key, **{CLINICIAN: site.clinician_token()})
    assert down.status_code == 503, down.text
    assert down.json()["error"] == "identity_provider_unavailable" and down.headers["Retry-After"]
    assert _store(site.engine).get(ORG, key) is None
    monkeypatch.undo()
    _undecided(site, sid)
    # the provider is back: the same key runs the approval (nothing was stored for it)
    ok = c.post(url, body, key=key, **{CLINICIAN: site.clinician_token()})
    assert ok.status_code == 200 and "Idempotent-Replayed" not in ok.headers, ok.text
    # discovery unreachable (the provider down, its configuration no longer cached): 503
    site.idp.stop()
    oidc._DISCOVERED.pop(site.idp.issuer, None)
    other_key = uuid.uuid4().hex
    gone = c.post(url, body, key=other_key, **{CLINICIAN: site.clinician_token()})
    assert gone.status_code == 503 and gone.json()["error"] == "identity_provider_unavailable"
    assert _store(site.engine).get(ORG, other_key) is None


def test_retry_with_the_same_key_after_adding_the_clinician_token_succeeds(site):
    c = site.client()
    sid, draft, body = _draft(site, c, "NOSTORE-2")
    url = f"/sessions/{sid}/drafts/1/approval"
    key = uuid.uuid4().hex
    assert c.post(url, body, key=key).status_code == 401
    ok = c.post(url, body, key=key, **{CLINICIAN: site.clinician_token()})
    assert ok.status_code == 200, ok.text
    assert "Idempotent-Replayed" not in ok.headers
    again = c.post(url, body, key=key, **{CLINICIAN: site.clinician_token()})
    assert again.status_code == 200 and again.headers["Idempotent-Replayed"] == "true"


# -- 3. an approval that could not be written is refused before it is recorded ------------
def test_approval_without_write_back_consent_is_refused_and_records_nothing(site):
    c = site.client()
    sid, draft, body = _draft(site, c, "CONSENT-1",
                              consent={"capture": True, "write_back": False})
    r = c.post(f"/sessions/{sid}/drafts/1/approval", body,
               **{CLINICIAN: site.clinician_token()})
    assert r.status_code == 409, r.text
    assert r.json()["field"] == "consent.write_back" and r.json()["rule"] == "consent_missing"
    _undecided(site, sid)
    assert site.engine.store.approval(ORG, draft["id"]) is None
    # opening the session again cannot change a recorded consent, and says which
    again = session_body("CONSENT-1")
    again["consent"] = {"capture": True, "write_back": True}
    r = c.post("/sessions", again)
    assert r.status_code == 409 and r.json()["field"] == "consent.write_back", r.text
    again["consent"] = {"capture": True}
    assert c.post("/sessions", again).status_code == 200               # the same consent
    # a consent the first open did not give is recorded by a later one
    first = session_body("CONSENT-2")
    first["consent"] = {"capture": True}
    sid2 = c.post("/sessions", first).json()["id"]
    from chartbridge.core.models import ConsentScope
    assert ConsentScope.WRITE_BACK not in site.engine.store.consents(ORG, sid2)
    assert c.post("/sessions", session_body("CONSENT-2")).status_code == 200
    assert site.engine.store.consents(ORG, sid2)[ConsentScope.WRITE_BACK] is True


# -- 4. Idempotency-Keys are the caller's own ----------------------------------------------
def test_another_principal_with_the_same_key_and_body_is_not_given_the_stored_answer(site):
    c, second = site.client(), site.client(ORG, SECOND)
    key = uuid.uuid4().hex
    first = c.post("/sessions", session_body("PRINCIPAL-1"), key=key)
    assert first.status_code == 201
    theirs = second.post("/sessions", session_body("PRINCIPAL-1"), key=key)
    assert theirs.status_code == 422 and "Idempotent-Replayed" not in theirs.headers
    assert theirs.json()["field"] == "Idempotency-Key"
    # one client, two clinicians, one key: the second is not handed the first's approval
    sid, draft, body = _draft(site, c, "PRINCIPAL-2")
    url = f"/sessions/{sid}/drafts/1/approval"
    key = uuid.uuid4().hex
    mine = c.post(url, body, key=key, **{CLINICIAN: site.clinician_token("clin-42")})
    assert mine.status_code == 200, mine.text
    hers = c.post(url, body, key=key, **{CLINICIAN: site.clinician_token("clin-99", "Dr B")})
    assert hers.status_code == 422 and "Idempotent-Replayed" not in hers.headers


# -- 7. credentials answer for their own org, and only while the client is registered -----
def test_a_bearer_token_stops_working_when_its_client_is_removed(site):
    c = site.client(ORG, SECOND)
    assert c.get("/sessions/nope").status_code == 404                  # the token works
    path = site.engine.config_dir / f"{ORG}.yaml"
    doc = yaml.safe_load(path.read_text())
    doc["api"]["clients"] = [x for x in doc["api"]["clients"] if x["client_id"] != SECOND]
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    r = c.get("/sessions/nope")
    assert r.status_code == 401 and r.json()["field"] == "Authorization", r.text
    assert site.client(ORG, CLIENT).get("/sessions/nope").status_code == 404


def test_an_authenticator_answering_for_another_org_is_refused(site):
    from chartbridge.core.models import Identifier

    def elsewhere(request, org):
        if request.headers.get("X-Test-Elsewhere") != "yes":
            return None
        return auth.Principal(org=OTHER, scopes=frozenset({"read"}), client_id=None,
                              person=Identifier(value="dr", type="USER", system="idp"),
                              person_name=None, via="page")
    auth.register_authenticator(elsewhere)
    try:
        r = httpx.get(f"{site.client().api}/sessions/nope", headers={"X-Test-Elsewhere": "yes"})
        assert r.status_code == 403 and r.json()["error"] == "forbidden", r.text
    finally:
        auth.AUTHENTICATORS.remove(elsewhere)
