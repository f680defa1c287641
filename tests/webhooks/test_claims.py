"""Claims: many workers holding the same delivery send one attempt; a dead worker's lease
expires and the delivery is sent again (at least once); a redirect is not followed."""
from __future__ import annotations

import threading
from datetime import datetime, timezone
from types import SimpleNamespace

from chartbridge.config.secrets import SecretRef
from chartbridge.core.clock import FrozenClock
from chartbridge.webhooks import outbox
from chartbridge.webhooks.delivery import Deliverer
from chartbridge.webhooks.store import WebhookStore
from tests.webhooks.support import SECRET, wait_until


def _deliverer(db, clock, url, tmp_path, **sub):
    secret = tmp_path / "secret"
    secret.write_text(SECRET)
    subscriber = SimpleNamespace(id="ops", url=url, secret=SecretRef(f"file:{secret}"),
                                 events=["draft.ready"], timeout_s=2,
                                 max_attempts=sub.get("max_attempts", 5))
    return Deliverer(WebhookStore(db, clock, lease_s=30), clock,
                     subscribers_of=lambda org: [subscriber] if org == "org-a" else [],
                     resolve=lambda ref: ref.resolve())


def _one_event(db, clock) -> str:
    with db.transaction() as tx:
        outbox.draft_ready(tx, org_id="org-a", session_id="s1", draft_id="d1", version=1,
                           recording_version=1, at=clock.now())


def test_twenty_workers_with_the_same_delivery_send_it_once(db, receiver, tmp_path):
    clock = FrozenClock(datetime.now(timezone.utc))
    hooks = _deliverer(db, clock, receiver.url, tmp_path)
    _one_event(db, clock)
    hooks.store.fan_out(hooks.subscribers_of)
    hooks.store.fan_out(hooks.subscribers_of)                   # a second sweeper: no copy
    (did,) = [d for _, d in hooks.store.due()]
    # Given the receiver holds the first request open
    receiver.hold = threading.Event()
    barrier, results = threading.Barrier(20), []

    def worker():
        barrier.wait(10)
        results.append(hooks.deliver("org-a", did))

    threads = [threading.Thread(target=worker) for _ in range(20)]
    for t in threads:
        t.start()
    wait_until(lambda: receiver.requests == 1 and len(results) == 19)
    receiver.hold.set()
    for t in threads:
        t.join(10)
    # Then one request reached the receiver; every other worker found it claimed
    assert receiver.requests == 1
    assert (results.count("delivered"), results.count(None)) == (1, 19)
    assert hooks.store.list("org-a")[0].attempts == 1


def test_a_dead_workers_claim_expires_and_the_delivery_is_sent(db, receiver, tmp_path):
    clock = FrozenClock(datetime.now(timezone.utc))
    hooks = _deliverer(db, clock, receiver.url, tmp_path)
    _one_event(db, clock)
    hooks.store.fan_out(hooks.subscribers_of)
    (did,) = [d for _, d in hooks.store.due()]
    # Given a worker claimed it and died before recording anything
    assert hooks.store.claim("org-a", did, owner="dead") is not None
    assert hooks.store.due() == [] and hooks.deliver("org-a", did) is None
    # When its lease has expired
    clock.advance(31)
    # Then it is due again and delivered (a second attempt: at least once)
    assert [d for _, d in hooks.store.due()] == [did]
    assert hooks.deliver("org-a", did) == "delivered"
    assert receiver.requests == 1
    # and the dead worker's late answer changes nothing
    (d,) = hooks.store.list("org-a")
    assert (d.status, d.attempts) == ("delivered", 2)


def test_a_redirect_is_not_followed_and_counts_as_a_failed_attempt(db, tmp_path):
    import http.server

    class Redirect(http.server.BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            self.send_response(307)
            self.send_header("Location", "http://127.0.0.1:9/elsewhere")
            self.end_headers()

        def log_message(self, *a):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Redirect)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        clock = FrozenClock(datetime.now(timezone.utc))
        hooks = _deliverer(db, clock, f"http://127.0.0.1:{server.server_address[1]}/h",
                           tmp_path, max_attempts=1)
        _one_event(db, clock)
        assert hooks.run_due().get("failed") == 1
        (d,) = hooks.store.list("org-a")
        assert (d.status, d.last_status_code, d.last_error) == ("failed", 307, "http_307")
    finally:
        server.shutdown()
        server.server_close()


def test_a_secret_that_is_not_whsec_fails_the_delivery_without_showing_it(db, receiver,
                                                                            tmp_path):
    clock = FrozenClock(datetime.now(timezone.utc))
    hooks = _deliverer(db, clock, receiver.url, tmp_path, max_attempts=1)
    (tmp_path / "secret").write_text("hunter2-plain-password")
    _one_event(db, clock)
    hooks.run_due()
    (d,) = hooks.store.list("org-a")
    assert (d.status, d.last_error) == ("failed", "secret: config_invalid")
    assert receiver.requests == 0


def test_an_attempt_lost_with_its_worker_at_the_last_attempt_fails_the_delivery(db, receiver,
                                                                              tmp_path):
    clock = FrozenClock(datetime.now(timezone.utc))
    hooks = _deliverer(db, clock, receiver.url, tmp_path, max_attempts=1)
    _one_event(db, clock)
    hooks.store.fan_out(hooks.subscribers_of)
    (did,) = [d for _, d in hooks.store.due()]
    # Given the only allowed attempt died with its worker (finish never ran)
    assert hooks.store.claim("org-a", did, owner="dead") is not None
    clock.advance(31)                                   # its lease expired
    # When a worker finds it due again
    assert hooks.deliver("org-a", did) is None
    # Then it is failed (attempt_lost), not retried past its budget, not "delivering" forever
    d = hooks.store.get("org-a", did)
    assert (d.status, d.attempts, d.last_error) == ("failed", 1, "attempt_lost")
    assert hooks.store.due() == [] and receiver.requests == 0


class _Raising:
    """An httpx.Client stand-in whose POST raises what it is given."""

    def __init__(self, exc):
        self.exc = exc

    def __call__(self, **kw):
        return self

    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False

    def post(self, *a, **kw):
        raise self.exc


def test_an_attempt_raising_anything_is_a_failed_attempt_named_by_its_class(db, tmp_path):
    import httpx

    done: list[str] = []
    for exc in (httpx.InvalidURL("no host"), RuntimeError("surprise")):
        clock = FrozenClock(datetime.now(timezone.utc))
        hooks = _deliverer(db, clock, "http://example.invalid/h", tmp_path, max_attempts=2)
        hooks.http = _Raising(exc)
        with db.transaction() as tx:
            outbox.draft_ready(tx, org_id="org-a", session_id=f"s-{type(exc).__name__}",
                               draft_id="d1", version=1,
                               recording_version=1, at=clock.now())
        hooks.store.fan_out(hooks.subscribers_of)
        (did,) = [d for _, d in hooks.store.due() if d not in done]
        done.append(did)
        # the first attempt raises: a retry later, not a delivery stuck in "delivering"
        assert hooks.deliver("org-a", did) == "pending"
        clock.advance(3600)
        assert hooks.deliver("org-a", did) == "failed"
        d = hooks.store.get("org-a", did)
        assert (d.status, d.attempts, d.last_error) == ("failed", 2, type(exc).__name__)


def test_list_is_newest_first_with_a_limit_and_get_finds_any_delivery(db, database_url,
                                                                      tmp_path):
    from click.testing import CliRunner

    from chartbridge.cli.webhooks import webhooks

    clock = FrozenClock(datetime.now(timezone.utc))
    hooks = _deliverer(db, clock, "http://127.0.0.1:9/h", tmp_path)
    # Given more deliveries than one page of the list
    for n in range(503):
        with db.transaction() as tx:
            outbox.draft_ready(tx, org_id="org-a", session_id=f"s{n}", draft_id=f"d{n}",
                               version=1, recording_version=1, at=clock.now())
        clock.advance(1)
    hooks.store.fan_out(hooks.subscribers_of, limit=1000)
    newest = max(hooks.store.list("org-a", limit=1000), key=lambda d: d.created_at)
    oldest = min(hooks.store.list("org-a", limit=1000), key=lambda d: d.created_at)
    # Then the default list shows the newest, and get() finds the oldest too
    page = hooks.store.list("org-a")
    assert len(page) == 500 and page[0].id == newest.id
    assert [d.created_at for d in page] == sorted((d.created_at for d in page), reverse=True)
    assert hooks.store.get("org-a", oldest.id).id == oldest.id
    assert hooks.store.events("org-a", limit=1)[0]["data"]["draft_id"] == "d502"
    out = CliRunner().invoke(webhooks, ["list", "--org", "org-a", "--limit", "2", "--json",
                                        "--database-url", database_url])
    assert out.exit_code == 0, out.output
    import json
    assert [r["id"] for r in json.loads(out.output)][0] == newest.id
    assert len(json.loads(out.output)) == 2
