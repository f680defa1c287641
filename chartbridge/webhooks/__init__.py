"""Outbound webhooks (Standard Webhooks): who is told what, and how it gets there.

config.py   the org file's `webhooks:` subscribers (URL, secret by reference, events)
events.py   the event types and the body schema (pydantic): ids and states only
outbox.py   `emit(tx, ...)`: the event row, written in the transaction of the state change
signing.py  the Standard Webhooks signature (webhook-id / -timestamp / -signature)
store.py    fan-out to subscribers, claims (leases), attempts, list and replay
delivery.py one attempt over HTTP (timeouts, no redirects) and its backoff

Nothing here is imported by core; the ledger imports outbox.py (and only it) to write the
event in its own transaction.
"""
