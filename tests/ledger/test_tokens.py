from datetime import timedelta

from chartbridge.ledger.tokens import DbReplayGuard, DbTokenCache


def test_token_cache_is_per_org_and_expires_with_margin(db, clock):
    cache = DbTokenCache(db, clock, margin_seconds=30)
    cache.put("org-a", "epic", "tok-a", clock.now() + timedelta(seconds=300))
    assert cache.get("org-a", "epic") == "tok-a"
    assert cache.get("org-b", "epic") is None                  # never another org's token
    clock.advance(271)                                          # inside the safety margin
    assert cache.get("org-a", "epic") is None
    cache.put("org-a", "epic", "tok-2", clock.now() + timedelta(seconds=300))
    assert cache.get("org-a", "epic") == "tok-2"
    cache.invalidate("org-a", "epic")
    assert cache.get("org-a", "epic") is None


def test_replay_guard_accepts_a_jti_once_per_org(db, clock):
    guard = DbReplayGuard(db, clock)
    exp = clock.now() + timedelta(seconds=300)
    assert guard.first_use("org-a", "jti-1", exp) is True
    assert guard.first_use("org-a", "jti-1", exp) is False     # replay
    assert guard.first_use("org-b", "jti-1", exp) is True      # scoped by org
