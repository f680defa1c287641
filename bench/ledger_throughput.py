"""The write ledger's own cost: idempotent write commands through WriteLedger.execute() with
a no-op adapter, next to a bare INSERT ... ON CONFLICT DO NOTHING of the same rows, on the
same database in the same run (PostgreSQL, and SQLite beside it).

    .venv/bin/python bench/ledger_throughput.py [--writes 1000] [--postgres URL]

For each backend, two fresh migrated databases (one for the ledger, one for the reference):
1. reference: for each command, its write_ledger row (key, request hash, command JSON: the
   same values the ledger's claim inserts) in its own transaction,
   INSERT ... ON CONFLICT (key) DO NOTHING — what any durable, idempotent insert costs;
2. ledger: WriteLedger.execute(command, NoopAdapter) for the same commands — two commits:
   the claim (insert, already leased and marked maybe sent, + audit rows), adapter call,
   finish (update + audit row);
3. replay: execute() of every command again (a duplicate approval, a redelivered job): the
   claim finds the finished row and returns it; duplicates handled per second.
One thread, one write at a time. Writes docs/bench/ledger_throughput.png; prints the
PostgreSQL ratio ledger / reference last.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sqlalchemy.dialects.postgresql import insert as pg_insert  # noqa: E402
from sqlalchemy.dialects.sqlite import insert as sqlite_insert  # noqa: E402

from bench._common import PG_ADMIN, PgDatabases, bar_plot  # noqa: E402
from chartbridge.core.clock import SystemClock  # noqa: E402
from chartbridge.core.models import (ApprovalState, NoteDraft, NoteSection,  # noqa: E402
                                     Provenance, WriteCommand, WriteOutcome, WriteStatus)
from chartbridge.ledger.db import Database, make_engine  # noqa: E402
from chartbridge.ledger.migrate import upgrade  # noqa: E402
from chartbridge.ledger.tables import WriteRow  # noqa: E402
from chartbridge.ledger.writes import WriteLedger  # noqa: E402

T0 = datetime(2026, 11, 21, 15, 0, tzinfo=timezone.utc)


class NoopAdapter:
    name = "noop"

    def send(self, command: WriteCommand) -> WriteOutcome:
        return WriteOutcome(external_id=command.encounter_key)

    def reconcile(self, command: WriteCommand) -> WriteOutcome | None:
        return None


def commands(n: int, run: str) -> list[WriteCommand]:
    prov = Provenance(transcriber="t", transcriber_model="m", generator="g",
                      generator_version="1", template_id="progress", template_version="1")
    out = []
    for i in range(n):
        draft = NoteDraft(id=f"d{i}", session_id=f"s{i}", version=1, provenance=prov,
                          created_at=T0, sections=[NoteSection(
                              code="51847-2", text="Community acquired pneumonia. " * 20)])
        out.append(WriteCommand(org_id="bench", target="noop", session_id=f"s{i}",
                                encounter_key=f"{run}-{i}", note_version=1,
                                resource_kind="DocumentReference",
                                approval_state=ApprovalState.APPROVED,
                                correlation_id=f"c{i}", draft=draft))
    return out


def reference(engine, cmds: list[WriteCommand]) -> float:
    """Bare idempotent inserts of the ledger's rows; seconds. The statement is built once
    and executed with each row's values (the cheapest way through SQLAlchemy Core; building
    it per row with `.values()` costs about as much again)."""
    table = WriteRow.__table__
    insert = pg_insert if engine.dialect.name == "postgresql" else sqlite_insert
    stmt = insert(table).on_conflict_do_nothing(index_elements=["key"])
    start = time.perf_counter()
    for c in cmds:
        now = datetime.now(timezone.utc)
        values = dict(key=c.idempotency_key(), org_id=c.org_id, target=c.target,
                      session_id=c.session_id, resource_kind=c.resource_kind, kind=str(c.kind),
                      request_hash=c.request_hash(), status=WriteStatus.IN_FLIGHT, attempts=1,
                      maybe_sent=False, command=c.model_dump(mode="json"),
                      lease_owner=uuid.uuid4().hex, lease_expires_at=now,
                      correlation_id=c.correlation_id, created_at=now, updated_at=now)
        with engine.begin() as conn:
            conn.execute(stmt, values)
    return time.perf_counter() - start


def through_ledger(db: Database, cmds: list[WriteCommand]) -> float:
    ledger, adapter = WriteLedger(db, SystemClock()), NoopAdapter()
    start = time.perf_counter()
    for c in cmds:
        record = ledger.execute(c, adapter)
        assert record.status == WriteStatus.SUCCEEDED
    return time.perf_counter() - start


def migrated(url: str):
    engine = make_engine(url)
    upgrade(engine)
    return engine


def backend(name: str, urls: tuple[str, str], n: int) -> dict[str, float]:
    ref_engine, led_engine = migrated(urls[0]), migrated(urls[1])
    db = Database(led_engine)
    warm = commands(20, "warm")
    reference(ref_engine, warm)
    through_ledger(db, warm)
    cmds = commands(n, uuid.uuid4().hex[:8])
    t_ref = reference(ref_engine, cmds)
    t_led = through_ledger(db, cmds)
    t_dup = through_ledger(db, cmds)          # every one a duplicate now
    ref_engine.dispose()
    led_engine.dispose()
    rates = {"reference": n / t_ref, "ledger": n / t_led, "duplicates": n / t_dup}
    print(f"{name:10} bare INSERT ON CONFLICT {rates['reference']:7.0f}/s   ledger execute "
          f"{rates['ledger']:7.0f}/s   duplicates {rates['duplicates']:7.0f}/s   ratio "
          f"{rates['ledger'] / rates['reference']:.3f}")
    return rates


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--writes", type=int, default=1000)
    ap.add_argument("--postgres", default=PG_ADMIN, help="admin URL (creates databases)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        lite = backend("SQLite", (f"sqlite:///{tmp}/ref.db", f"sqlite:///{tmp}/ledger.db"),
                       args.writes)
    with PgDatabases(args.postgres) as urls:
        pg = backend("PostgreSQL", urls, args.writes)
    bars = {f"{b} {k}": v for b, rates in (("SQLite", lite), ("PostgreSQL", pg))
            for k, v in rates.items()}
    plot = bar_plot("ledger_throughput", "Write ledger vs bare INSERT ... ON CONFLICT DO "
                    "NOTHING, one writer", bars, "writes per second",
                    f"{args.writes} distinct writes, then the same again (duplicates); "
                    "target ledger >= 0.3 x reference")
    print(f"plot        {plot}")
    print(f"SQLite ratio ledger/reference      {lite['ledger'] / lite['reference']:.3f}")
    print(f"PostgreSQL ratio ledger/reference  {pg['ledger'] / pg['reference']:.3f}")


if __name__ == "__main__":
    main()
