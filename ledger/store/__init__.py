"""The canonical state store on SQLAlchemy, one module per aggregate. Every method is one
transaction, every query filters on org_id, and domain objects (core/models.py) go in and
come out. `SqlStore` is all of them over one database: it implements core.ports.Store."""
from __future__ import annotations

from .audit_log import AuditLog
from .base import StoreBase
from .drafts import DraftStore
from .recordings import RecordingStore
from .safeguards import SafeguardStore
from .sessions import SessionStore


class SqlStore(SessionStore, RecordingStore, DraftStore, SafeguardStore, AuditLog):
    """Every aggregate's store over one Database and Clock (`SqlStore(db, clock)`)."""


__all__ = ["AuditLog", "DraftStore", "RecordingStore", "SafeguardStore", "SessionStore",
           "SqlStore", "StoreBase"]
