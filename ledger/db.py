"""Database engines: SQLite (WAL) by default, PostgreSQL when CHARTBRIDGE_DATABASE_URL says.

Nothing is created at import time: `make_engine()` is called by the composition root.
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path

from sqlalchemy import Engine, Table, create_engine, event
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session, sessionmaker

DEFAULT_URL = "sqlite:///./var/chartbridge.db"


def database_url(url: str | None = None) -> str:
    if url:
        return url
    from chartbridge.settings import load_settings      # CHARTBRIDGE_DATABASE_URL
    return load_settings().database_url or DEFAULT_URL


def _normalise(url: str) -> str:
    # Accept the plain postgresql:// spelling people paste, and use psycopg 3 for it.
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        return "postgresql+psycopg://" + url.split("://", 1)[1]
    return url


def make_engine(url: str | None = None, **kwargs) -> Engine:
    url = _normalise(database_url(url))
    # An error's message never carries bound parameters (note text, identifiers): they
    # would reach a log or a traceback. See chartbridge/logs.py.
    kwargs.setdefault("hide_parameters", True)
    if url.startswith("sqlite"):
        return _sqlite_engine(url, **kwargs)
    kwargs.setdefault("pool_pre_ping", True)
    kwargs.setdefault("pool_size", 10)
    kwargs.setdefault("max_overflow", 20)
    return create_engine(url, **kwargs)


def _sqlite_engine(url: str, **kwargs) -> Engine:
    path = url.split(":///", 1)[1] if ":///" in url else ""
    if path and path != ":memory:":
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    connect_args = kwargs.pop("connect_args", {})
    connect_args.setdefault("timeout", 30)          # busy timeout, seconds
    connect_args.setdefault("check_same_thread", False)
    engine = create_engine(url, connect_args=connect_args, **kwargs)

    # SQLAlchemy's documented pysqlite workaround ("Serializable isolation / Savepoints /
    # Transactional DDL"): stop the driver from deferring BEGIN, and emit it ourselves.
    # BEGIN IMMEDIATE takes the write lock up front, so two transactions never both read
    # and then fight to upgrade (which SQLite answers with "database is locked").
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection, _record):
        dbapi_connection.isolation_level = None
        cur = dbapi_connection.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn):
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


def is_sqlite(engine: Engine) -> bool:
    return engine.dialect.name == "sqlite"


class Database:
    """The engine plus a session factory; one per process, built by bootstrap()."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._factory = sessionmaker(engine, expire_on_commit=False)
        # the unit of work open in this thread (or task), if any: see `unit_of_work`
        self._unit: ContextVar[Session | None] = ContextVar(f"unit-{id(self)}", default=None)

    @classmethod
    def from_url(cls, url: str | None = None, **kwargs) -> "Database":
        return cls(make_engine(url, **kwargs))

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """One unit of work: commits on success, rolls back on any error. Inside
        `unit_of_work()` it is that unit's transaction (committed when the unit ends)."""
        joined = self._unit.get()
        if joined is not None:
            yield joined
            return
        with self._factory() as session, session.begin():
            yield session

    @contextmanager
    def unit_of_work(self) -> Iterator[Session]:
        """One transaction for everything done inside it in this thread: every
        `transaction()` opened meanwhile joins it, so it is one commit (one WAL flush)
        instead of one each. Anything raised inside rolls all of it back, so nothing in
        it may catch a failed step and carry on. The connection is taken at the first
        statement, not here. Work that must wait for the commit (enqueueing a job) is
        done after the block."""
        if self._unit.get() is not None:
            yield self._unit.get()
            return
        with self._factory() as session, session.begin():
            token = self._unit.set(session)
            try:
                yield session
            finally:
                self._unit.reset(token)

    def ping(self) -> None:
        with self.engine.connect() as conn:
            conn.exec_driver_sql("SELECT 1")

    def dispose(self) -> None:
        self.engine.dispose()


def insert_for(tx: Session):
    """The dialect's INSERT (both have ON CONFLICT)."""
    return pg_insert if tx.bind.dialect.name == "postgresql" else sqlite_insert


_INSERTS: dict[tuple, object] = {}


def insert_ignoring(tx: Session, table: Table, conflict: tuple[str, ...],
                    returning: str | None = None):
    """`INSERT … ON CONFLICT (conflict) DO NOTHING [RETURNING returning]` for the dialect
    of `tx`, built once: execute it with a dict of column values (`tx.execute(stmt, row)`);
    with `returning`, a row comes back only if it was new. Building the statement with
    `.values(**row)` on each call cost more than the insert itself on the ledger's and the
    callback's hot paths (bench/ledger_throughput.py, bench/callback_load.py)."""
    dialect = tx.bind.dialect.name
    key = (dialect, table.name, conflict, returning)
    stmt = _INSERTS.get(key)
    if stmt is None:
        stmt = insert_for(tx)(table).on_conflict_do_nothing(index_elements=list(conflict))
        if returning is not None:
            stmt = stmt.returning(table.c[returning])
        _INSERTS[key] = stmt
    return stmt
