"""Inbound: Epic's bearer JWT is verified per the interface page before anything is stored."""
from __future__ import annotations

import json
from datetime import datetime, timezone

import httpx
import pytest
from epic_support import EPIC_ISS, ORG, Recorder
from joserfc import jwt
from joserfc.jwk import OctKey

from chartbridge.adapters.epic_haiku.auth import InboundVerifier, KeysUnavailable, Unauthorized
from chartbridge.core.clock import FrozenClock, SystemClock
from chartbridge.ledger.tokens import DbReplayGuard
from contract_tests.epic_haiku import EpicSimulator


class MemoryReplayGuard:
    def __init__(self):
        self.seen = set()

    def first_use(self, org_id, jti, expires_at):
        if (org_id, jti) in self.seen:
            return False
        self.seen.add((org_id, jti))
        return True


@pytest.fixture(scope="module")
def sim():
    """One simulator (one Epic key) for the module, on wall-clock time like the verifier."""
    s = EpicSimulator(epic_client_id=EPIC_ISS)
    s.start()
    yield s
    s.stop()


@pytest.fixture
def url():
    return f"https://engine.test/orgs/{ORG}/epic/ambient/AmbientSessionBegin"


def _verifier(sim, guard, clock=None, **kw):
    kw.setdefault("jwks_url", sim.jwks_url)
    kw.setdefault("http", httpx.Client())
    return InboundVerifier(org_id=ORG, issuer=EPIC_ISS, replay_guard=guard,
                           clock=clock or SystemClock(), **kw)


@pytest.fixture
def verifier(sim):
    return _verifier(sim, MemoryReplayGuard())


def test_accepts_a_good_token(verifier, sim, url):
    # Given a token Epic signed for this URL
    token = sim.make_inbound_token(url, ORG)
    # When it is verified, Then its claims come back
    claims = verifier.verify(f"Bearer {token}", url)
    assert claims["iss"] == EPIC_ISS and claims["aud"] == url


@pytest.mark.parametrize("mode,check", [
    ("wrong_key", "signature"), ("wrong_iss", "iss"), ("wrong_aud", "aud"),
    ("expired", "exp"), ("too_long", "exp"), ("no_jti", "jti"), ("alg_none", "alg")])
def test_rejects_bad_tokens_naming_the_check(verifier, sim, url, mode, check):
    # Given a token that is wrong in one way
    token = sim.make_inbound_token(url, ORG, mode)
    # When it is verified, Then it is refused as 401 naming that check, never echoing it
    with pytest.raises(Unauthorized) as err:
        verifier.verify(f"Bearer {token}", url)
    assert err.value.check == check and err.value.http_status == 401
    assert token not in err.value.message and token not in json.dumps(err.value.as_dict())


@pytest.mark.parametrize("header", [None, "", "Bearer", "Basic abc", "Bearer not-a-jwt"])
def test_rejects_missing_or_malformed(verifier, url, header):
    with pytest.raises(Unauthorized) as err:
        verifier.verify(header, url)
    assert err.value.check in ("missing", "format")


def test_rejects_hmac_token_even_when_signed_with_public_key_material(verifier, sim, url):
    # Given an HS384 token keyed with the JWKS's public text (the classic alg confusion)
    key = OctKey.import_key(json.dumps(sim.jwks["keys"][0]).encode())
    claims = {"iss": EPIC_ISS, "aud": url, "exp": int(verifier.clock.now().timestamp()) + 60,
              "jti": "x1"}
    token = jwt.encode({"alg": "HS384", "kid": sim.jwks["keys"][0]["kid"]}, claims, key,
                       algorithms=["HS384"])
    # Then it is refused on its algorithm
    with pytest.raises(Unauthorized) as err:
        verifier.verify(f"Bearer {token}", url)
    assert err.value.check == "alg"


def test_rejects_a_replayed_token_for_the_org(db, sim, url):
    # Given a token already presented once, remembered in the engine's database
    verifier = _verifier(sim, DbReplayGuard(db, SystemClock()))
    token = sim.make_inbound_token(url, ORG)
    verifier.verify(f"Bearer {token}", url)
    # When it is presented again, Then it is a replay
    with pytest.raises(Unauthorized) as err:
        verifier.verify(f"Bearer {token}", url)
    assert err.value.check == "replay"
    # And a fresh token for the same delivery (Epic's retry) is fine
    verifier.verify(f"Bearer {sim.make_inbound_token(url, ORG)}", url)


def test_unknown_kid_refetches_jwks_once(sim, url):
    clock = FrozenClock(datetime.now(timezone.utc))      # the simulator signs on wall time
    # Given a verifier that cached a JWKS without Epic's new key
    old = {"keys": [dict(sim.jwks["keys"][0], kid="old-key")]}
    rec = Recorder().on("/jwks.json", lambda r: httpx.Response(200, json=old),
                        lambda r: httpx.Response(200, json=sim.jwks))
    v = _verifier(sim, MemoryReplayGuard(), clock,
                  jwks_url="https://epic.test/.well-known/jwks.json", http=rec.client())
    v._keyset()
    clock.advance(60)
    # When a token signed with the new key arrives, Then the JWKS is fetched again and it verifies
    v.verify(f"Bearer {sim.make_inbound_token(url, ORG)}", url)
    assert len(rec.calls("/jwks.json")) == 2
    # And an unknown kid right after does not trigger another fetch (no fetch storms)
    forged = jwt.encode({"alg": "RS384", "kid": "nobody"}, {"x": 1}, _other_rsa(), algorithms=["RS384"])
    with pytest.raises(Unauthorized) as err:
        v.verify(f"Bearer {forged}", url)
    assert err.value.check == "kid" and len(rec.calls("/jwks.json")) == 2


def test_jwks_file_and_es384(clock, tmp_path):
    # Given an ES384-signing Epic whose keys we keep in a file
    from contract_tests.epic_haiku import EpicSimulator
    es = EpicSimulator(epic_alg="ES384", epic_client_id=EPIC_ISS,
                       clock=lambda: clock.now().timestamp())
    es.start()
    try:
        path = tmp_path / "epic-jwks.json"
        path.write_text(json.dumps(es.jwks))
        v = InboundVerifier(org_id=ORG, issuer=EPIC_ISS, replay_guard=MemoryReplayGuard(),
                            clock=clock, jwks_file=path)
        url = "https://engine.test/x"
        # When good and bad tokens arrive, Then the good one verifies and the bad one does not
        assert v.verify(f"Bearer {es.make_inbound_token(url, ORG)}", url)["aud"] == url
        with pytest.raises(Unauthorized):
            v.verify(f"Bearer {es.make_inbound_token(url, ORG, 'wrong_key')}", url)
    finally:
        es.stop()


def test_unreachable_jwks_is_503_not_401(sim, url):
    rec = Recorder().on("/jwks.json", lambda r: httpx.Response(502, json={}))
    v = _verifier(sim, MemoryReplayGuard(), jwks_url="https://epic.test/.well-known/jwks.json",
                  http=rec.client())
    with pytest.raises(KeysUnavailable) as err:
        v.verify(f"Bearer {sim.make_inbound_token(url, ORG)}", url)
    assert err.value.http_status == 503


def _other_rsa():
    from epic_support import private_key
    return private_key("RS384")
