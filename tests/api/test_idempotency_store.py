"""The Idempotency-Key claims (ledger/idempotency.py) on each backend: one owner among many
concurrent claims, the stored answer replayed, another body refused, a claim left by a dead
process taken over after a while, expired keys purged, keys per org."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from chartbridge.ledger.idempotency import IdempotencyStore


def test_claims_replays_mismatch_takeover_and_purge(db, clock):
    store = IdempotencyStore(db, clock)
    assert store.begin("org-a", "k", "f1").outcome == "owner"
    assert store.begin("org-a", "k", "f1").outcome == "in_flight"
    assert store.begin("org-a", "k", "f2").outcome == "in_flight"
    assert store.begin("org-b", "k", "f2").outcome == "owner"            # per org
    store.finish("org-a", "k", 201, {"id": "s1"})
    replay = store.begin("org-a", "k", "f1")
    assert (replay.outcome, replay.status, replay.response) == ("replay", 201, {"id": "s1"})
    assert store.begin("org-a", "k", "f2").outcome == "mismatch"
    # a claim whose owner died: taken over once stale, by the same request only
    assert store.begin("org-a", "dead", "f1").outcome == "owner"
    clock.advance(61)
    assert store.begin("org-a", "dead", "f2").outcome == "mismatch"
    assert store.begin("org-a", "dead", "f1").outcome == "owner"
    assert store.begin("org-a", "dead", "f1").outcome == "in_flight"
    # a released claim (a 5xx) runs again
    store.release("org-a", "dead")
    assert store.begin("org-a", "dead", "f1").outcome == "owner"
    clock.advance(25 * 3600)
    assert store.purge_expired() == 3
    assert store.get("org-a", "k") is None


def test_one_owner_among_concurrent_claims(db, clock):
    store = IdempotencyStore(db, clock)
    with ThreadPoolExecutor(12) as pool:
        outcomes = list(pool.map(lambda _: store.begin("org-a", "same", "f").outcome, range(24)))
    assert outcomes.count("owner") == 1 and set(outcomes) == {"owner", "in_flight"}
