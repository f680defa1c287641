"""What the engine trusts and keeps: external URLs never follow the request's Host, cookies
are Secure behind an https public URL, tokens are sealed at rest, and an anonymous request
writes no row and calls out at most once per discovery TTL."""
from __future__ import annotations

from datetime import timedelta
from urllib.parse import parse_qs, urlsplit

from hostile_support import ORG, hostile
from sqlalchemy import func, select, text

from chartbridge.ledger.tables import AuditRow, ReplayRow, TokenRow

__all__ = ["hostile"]


def launch_path(h, session: str = "AMB-L1") -> str:
    return (f"/orgs/{ORG}/epic/haiku/launch?session={session}&launch=L1"
            f"&iss={h.sim.smart.fhir_base}")


def rows(h, table) -> int:
    with h.engine.db.transaction() as tx:
        return tx.scalar(select(func.count()).select_from(table))


def test_redirect_uri_never_follows_the_host_header(hostile):
    hostile.app.config["CHARTBRIDGE_PUBLIC_URL"] = "https://chartbridge.example.org"
    for headers in ({"Host": "evil.example"},
                    {"Host": "evil.example", "X-Forwarded-Host": "evil2.example",
                     "X-Forwarded-Proto": "http"}):
        resp = hostile.client.get(launch_path(hostile), headers=headers)
        assert resp.status_code == 302, resp.get_data(as_text=True)[:300]
        query = parse_qs(urlsplit(resp.headers["Location"]).query)
        assert query["redirect_uri"] == [
            f"https://chartbridge.example.org/orgs/{ORG}/epic/haiku/callback"]
        assert "evil" not in resp.headers["Location"]


def test_review_oidc_redirect_uri_never_follows_the_host_header(hostile, monkeypatch):
    from chartbridge.review import oidc
    hostile.app.config["CHARTBRIDGE_PUBLIC_URL"] = "https://chartbridge.example.org"
    prefix = "CHARTBRIDGE_OIDC_DEMO_EPIC_"
    monkeypatch.setenv(prefix + "ISSUER", "https://idp.example")
    monkeypatch.setenv(prefix + "CLIENT_ID", "cb")
    monkeypatch.setattr(oidc, "_fetch_configuration", lambda engine, provider: {
        "issuer": "https://idp.example", "authorization_endpoint": "https://idp.example/auth",
        "token_endpoint": "https://idp.example/token", "jwks_uri": "https://idp.example/jwks"})
    resp = hostile.client.get(f"/orgs/{ORG}/review/login", headers={"Host": "evil.example"})
    assert resp.status_code == 302
    query = parse_qs(urlsplit(resp.headers["Location"]).query)
    assert query["redirect_uri"] == [f"https://chartbridge.example.org/orgs/{ORG}/review/oidc/callback"]


def test_inbound_token_audience_is_the_public_url_not_the_host(hostile):
    hostile.app.config["CHARTBRIDGE_PUBLIC_URL"] = "https://chartbridge.example.org"
    event = "AmbientSessionBegin"
    from hostile_support import begin_body
    # a token for the URL the attacker's Host names is refused...
    bad = hostile.sim.make_inbound_token(f"http://evil.example/orgs/{ORG}/epic/ambient/{event}", ORG)
    resp = hostile.client.post(hostile.url(event), json=begin_body("AMB-H1"),
                               headers={"Host": "evil.example", "Authorization": f"Bearer {bad}"})
    assert resp.status_code == 401
    # ...one for the public URL is accepted whatever Host says
    good = hostile.sim.make_inbound_token(
        f"https://chartbridge.example.org/orgs/{ORG}/epic/ambient/{event}", ORG)
    resp = hostile.client.post(hostile.url(event), json=begin_body("AMB-H1"),
                               headers={"Host": "evil.example", "Authorization": f"Bearer {good}"})
    assert resp.status_code == 200, resp.get_json()


def test_cookies_are_secure_when_the_public_url_is_https(hostile):
    hostile.app.config["CHARTBRIDGE_PUBLIC_URL"] = "https://chartbridge.example.org"
    resp = hostile.client.get(launch_path(hostile))      # plain http request, no proxy header
    cookies = resp.headers.getlist("Set-Cookie")
    assert cookies and all("Secure" in c and "HttpOnly" in c for c in cookies), cookies
    hostile.app.config["CHARTBRIDGE_PUBLIC_URL"] = "http://localhost"
    resp = hostile.client.get(launch_path(hostile, "AMB-L2"))
    assert all("Secure" not in c for c in resp.headers.getlist("Set-Cookie"))


def test_trusted_proxy_setting_applies_proxyfix(hostile):
    from chartbridge.web import create_app
    app = create_app(hostile.engine, trusted_proxies=1)
    seen = {}

    @app.get("/_probe")
    def _probe():
        from flask import request
        seen.update(scheme=request.scheme, remote=request.remote_addr)
        return "ok"

    app.test_client().get("/_probe", headers={"X-Forwarded-Proto": "https",
                                              "X-Forwarded-For": "203.0.113.9"})
    assert seen == {"scheme": "https", "remote": "203.0.113.9"}
    untrusted = create_app(hostile.engine)

    @untrusted.get("/_probe")
    def _probe2():
        from flask import request
        seen.update(scheme=request.scheme)
        return "ok"
    untrusted.test_client().get("/_probe", headers={"X-Forwarded-Proto": "https"})
    assert seen["scheme"] == "http"


def test_anonymous_launch_and_login_write_nothing_and_discovery_is_cached(hostile, monkeypatch):
    monkeypatch.setenv("CHARTBRIDGE_DEV_LOGIN", "1")
    from chartbridge.adapters import smart_launch
    calls = []
    real = smart_launch._discover
    monkeypatch.setattr(smart_launch, "_discover",
                        lambda engine, iss, ehr: calls.append(iss) or real(engine, iss, ehr))
    before = (rows(hostile, TokenRow), rows(hostile, AuditRow))
    for i in range(5):
        assert hostile.client.get(launch_path(hostile, f"AMB-A{i}")).status_code == 302
        assert hostile.client.get(f"/orgs/{ORG}/review/login").status_code == 200
        hostile.client.get(f"/orgs/{ORG}/epic/haiku/callback?state=x&error=access_denied")
        hostile.client.get(f"/orgs/{ORG}/epic/haiku/launch?session=a&launch=b"
                           "&iss=https://untrusted.example/fhir")
    assert (rows(hostile, TokenRow), rows(hostile, AuditRow)) == before
    assert len(calls) == 1


def test_the_database_holds_no_bearer_token_in_plaintext(hostile):
    from chartbridge.adapters.epic_haiku.client import BackendTokenSource  # noqa: F401
    cache = hostile.engine.services.token_cache
    now = hostile.engine.clock.now()
    secret_token = "eyJhbGciOiJSUzM4NCJ9.backend-bearer-" + "s3cr3t"
    smart_token = "smart-user-access-token-" + "t0ps3cret"
    cache.put(ORG, "epic-backend:client", secret_token, now + timedelta(minutes=5))
    cache.put(ORG, "web-session:haiku:abc",
              '{"phase": "ready", "smart": {"access_token": "%s"}}' % smart_token,
              now + timedelta(hours=1))
    # the real backend token path too: the adapter fetches one from the simulator
    adapter = hostile.engine.adapter(ORG, "epic_haiku")
    fetched = adapter.tokens.token()
    with hostile.engine.db.transaction() as tx:
        stored = [r for (r,) in tx.execute(text("SELECT token FROM access_tokens"))]
    assert len(stored) >= 3
    dump = "\n".join(stored)
    for plain in (secret_token, smart_token, fetched, "backend-bearer", "t0ps3cret"):
        assert plain not in dump
    # and the cache still answers with the plaintext
    assert cache.get(ORG, "epic-backend:client") == secret_token
    assert fetched == adapter.tokens.token()


def test_rotation_keeps_old_rows_readable(hostile, monkeypatch):
    from cryptography.fernet import Fernet

    from chartbridge.ledger.tokens import DbTokenCache
    old, new = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    monkeypatch.setenv("OLD_KEYS", old)
    monkeypatch.setenv("CHARTBRIDGE_TOKEN_KEYS", "env:OLD_KEYS")
    db, clock = hostile.engine.db, hostile.engine.clock
    DbTokenCache(db, clock).put(ORG, "k", "value-1", clock.now() + timedelta(hours=1))
    monkeypatch.setenv("OLD_KEYS", f"{new},{old}")
    rotated = DbTokenCache(db, clock)
    assert rotated.get(ORG, "k") == "value-1"
    monkeypatch.setenv("OLD_KEYS", new)
    assert DbTokenCache(db, clock).get(ORG, "k") is None      # old key dropped: a miss


def test_sweeper_purges_expired_tokens_sessions_and_seen_jtis(hostile):
    from chartbridge.jobs import Jobs, Sweeper, make_broker
    e = hostile.engine
    now = e.clock.now()
    cache, guard = e.services.token_cache, e.services.replay_guard
    cache.put(ORG, "epic-backend:old", "t", now - timedelta(seconds=1))
    cache.put(ORG, "web-session:review:old", "{}", now - timedelta(seconds=1))
    cache.put(ORG, "web-session:review:live", "{}", now + timedelta(hours=1))
    with e.db.transaction() as tx:
        tx.add(ReplayRow(org_id=ORG, jti="old", expires_at=now - timedelta(seconds=1)))
    result = Sweeper(Jobs(e, make_broker("memory://"), queue="purge-test")).sweep_once()
    assert result["purged"] == 3
    assert rows(hostile, TokenRow) == 1 and rows(hostile, ReplayRow) == 0


def test_smart_launch_keeps_the_clinicians_token_sealed(hostile):
    from hostile_support import smart_launch
    sid = hostile.begin()
    page = smart_launch(hostile, sid)
    assert hostile.client.get(page).status_code == 200
    with hostile.engine.db.transaction() as tx:
        stored = [r for (r,) in tx.execute(text("SELECT token FROM access_tokens"))]
    assert stored and all(s.startswith("gAAAA") for s in stored)      # Fernet tokens only
    assert all("access_token" not in s and "phase" not in s for s in stored)


def test_serve_public_url_defaults_to_the_bind_address_and_refuses_junk():
    import click
    import pytest

    from chartbridge.cli.serve import _public_url
    assert _public_url(None, "0.0.0.0", 8080) == "http://127.0.0.1:8080"
    assert _public_url("https://cb.example.org/", "0.0.0.0", 8080) == "https://cb.example.org"
    with pytest.raises(click.BadParameter):
        _public_url("evil.example", "127.0.0.1", 8080)
