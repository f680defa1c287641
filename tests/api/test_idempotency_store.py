"""The Idempotency-Key claims (ledger/idempotency.py) on each backend: one owner among many
concurrent claims, the stored answer replayed, another body refused, a claim left by a dead
process taken over after a while, expired keys purged, keys per org."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from chartbridge.ledger.idempotency import IdempotencyStore


def test_claims_replays_mismatch_takeover_and_purge(db, clock):
    store = IdempotencyStore(db, clock)
    owner = store.begin("org-a", "k", "f1")
    assert owner.outcome == "owner"
    assert store.begin("org-a", "k", "f1").outcome == "in_flight"
    assert store.begin("org-b", "k", "f2").outcome == "owner"            # per org
    assert store.finish("org-a", "k", owner, 201, {"id": "s1"})
    replay = store.begin("org-a", "k", "f1")
    assert (replay.outcome, replay.status, replay.response) == ("replay", 201, {"id": "s1"})
    assert store.begin("org-a", "k", "f2").outcome == "mismatch"
    # a claim whose owner died: taken over once stale, by the same request only
    assert store.begin("org-a", "dead", "f1").outcome == "owner"
    clock.advance(61)
    assert store.begin("org-a", "dead", "f2").outcome == "mismatch"
    taken = store.begin("org-a", "dead", "f1")
    assert taken.outcome == "owner"
    assert store.begin("org-a", "dead", "f1").outcome == "in_flight"
    # a released claim (a 5xx) runs again
    assert store.release("org-a", "dead", taken)
    assert store.begin("org-a", "dead", "f1").outcome == "owner"
    clock.advance(25 * 3600)
    assert store.purge_expired() == 3
    assert store.get("org-a", "k") is None


def test_another_body_while_in_flight_is_a_mismatch_not_in_flight(db, clock):
    """The draft's order: a key reused for another request is 422 whether or not the first
    one is still being answered; 409 is only for the same request."""
    store = IdempotencyStore(db, clock)
    assert store.begin("org-a", "k", "f1").outcome == "owner"
    assert store.begin("org-a", "k", "f2").outcome == "mismatch"
    assert store.begin("org-a", "k", "f1").outcome == "in_flight"


def test_a_slow_owner_whose_claim_was_taken_over_cannot_overwrite_or_release(db, clock):
    store = IdempotencyStore(db, clock)
    slow = store.begin("org-a", "k", "f1")
    clock.advance(61)                                     # the slow owner looks dead
    new = store.begin("org-a", "k", "f1")
    assert new.outcome == "owner"
    assert store.finish("org-a", "k", new, 201, {"id": "new"})
    assert not store.finish("org-a", "k", slow, 201, {"id": "slow"})     # too late
    assert not store.release("org-a", "k", slow)
    replay = store.begin("org-a", "k", "f1")
    assert (replay.outcome, replay.response) == ("replay", {"id": "new"})
    # nor can it overwrite a claim still in flight
    clock.advance(61)
    slow = new
    clock.advance(25 * 3600)                              # expired: claimed afresh
    fresh = store.begin("org-a", "k", "f1")
    assert fresh.outcome == "owner"
    assert not store.finish("org-a", "k", slow, 500, {"id": "slow"})
    assert not store.release("org-a", "k", slow)
    assert store.get("org-a", "k").state == "in_flight"
    assert store.finish("org-a", "k", fresh, 201, {"id": "fresh"})


def test_one_owner_among_concurrent_claims(db, clock):
    store = IdempotencyStore(db, clock)
    with ThreadPoolExecutor(12) as pool:
        outcomes = list(pool.map(lambda _: store.begin("org-a", "same", "f").outcome, range(24)))
    assert outcomes.count("owner") == 1 and set(outcomes) == {"owner", "in_flight"}
