"""Shared fixtures. One test body runs on every backend: SQLite always, PostgreSQL (and
later Redis/RabbitMQ) where reachable — and in CI an unreachable server is a failure, not a
skip (the dramatiq conftest habit)."""
from __future__ import annotations

import os
import uuid

import pytest
from chartbridge.core.clock import FrozenClock
from chartbridge.ledger.db import Database, make_engine
from chartbridge.ledger.migrate import upgrade

CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
PG_ADMIN_URL = os.environ.get("CHARTBRIDGE_TEST_POSTGRES_URL",
                              "postgresql://postgres@127.0.0.1:5432/test")


def _unavailable(what: str, exc: Exception):
    if CI:
        raise RuntimeError(f"{what} is required in CI but unreachable: {exc}") from exc
    pytest.skip(f"No connection to {what}: {exc}")


@pytest.fixture(scope="session")
def postgres_url():
    """A fresh database on the local PostgreSQL server for this test run, dropped after."""
    from sqlalchemy import create_engine

    name = f"cb_test_{uuid.uuid4().hex[:10]}"
    admin_url = PG_ADMIN_URL.replace("postgresql://", "postgresql+psycopg://", 1)
    try:
        admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    except Exception as exc:  # noqa: BLE001 - any failure to reach the server
        _unavailable("PostgreSQL", exc)
    yield admin_url.rsplit("/", 1)[0] + f"/{name}"
    with admin.connect() as conn:
        conn.exec_driver_sql(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,))
        conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}"')
    admin.dispose()


def _fresh_pg_schema(url: str) -> str:
    engine = make_engine(url)
    with engine.begin() as conn:
        conn.exec_driver_sql("DROP SCHEMA IF EXISTS public CASCADE")
        conn.exec_driver_sql("CREATE SCHEMA public")
    engine.dispose()
    return url


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request, tmp_path):
    """A migrated, empty database URL on each backend."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'chartbridge.db'}"
    else:
        url = _fresh_pg_schema(request.getfixturevalue("postgres_url"))
    engine = make_engine(url)
    upgrade(engine)
    engine.dispose()
    return url


@pytest.fixture
def db(database_url):
    database = Database.from_url(database_url)
    yield database
    database.dispose()


@pytest.fixture
def clock():
    return FrozenClock()


@pytest.fixture
def services(db, clock):
    """What adapter factories get, on the test's database and clock."""
    from chartbridge.bootstrap import make_services
    return make_services(db, clock)


@pytest.fixture
def ledger(db, clock):
    from chartbridge.ledger.writes import WriteLedger
    return WriteLedger(db, clock)
