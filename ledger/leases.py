"""Job leases: which worker is processing which chunk or version right now.

A worker takes the lease of a job (`process_chunk` of one chunk, `finish_version` of one
version) before running it and renews it from a heartbeat thread while it runs; a killed
worker stops renewing and its lease expires within `lease_s`. The sweeper then hands the
job to another worker at once, instead of waiting out a long staleness window, and a
duplicate message for a job someone is running is skipped rather than run twice in
parallel. The database stays the truth: a lease only says "someone alive is on it".
"""
from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import String, delete, select, update
from sqlalchemy.orm import Mapped, mapped_column

from chartbridge.core.ports import Clock

from .db import Database, insert_for
from .tables import Base, WriteRow


class JobLeaseRow(Base):
    __tablename__ = "job_leases"

    job_key: Mapped[str] = mapped_column(String(400), primary_key=True)
    org_id: Mapped[str] = mapped_column(String(64))
    owner: Mapped[str] = mapped_column(String(100))
    expires_at: Mapped[datetime]


def job_key(actor: str, org_id: str, *ids) -> str:
    return "|".join([actor, org_id, *(str(i) for i in ids)])


class JobLeases:
    def __init__(self, db: Database, clock: Clock, *, lease_s: float) -> None:
        self.db, self.clock, self.lease = db, clock, timedelta(seconds=lease_s)

    def acquire(self, org_id: str, key: str, owner: str) -> bool:
        """Take the lease unless another owner holds a live one."""
        now = self.clock.now()
        with self.db.transaction() as tx:
            ins = insert_for(tx)(JobLeaseRow.__table__).values(
                job_key=key, org_id=org_id, owner=owner, expires_at=now + self.lease)
            got = tx.execute(ins.on_conflict_do_update(
                index_elements=["job_key"],
                set_={"owner": owner, "expires_at": now + self.lease},
                where=(JobLeaseRow.__table__.c.expires_at < now)
                | (JobLeaseRow.__table__.c.owner == owner))
                .returning(JobLeaseRow.__table__.c.owner)).first()
            return got is not None

    def release(self, key: str, owner: str) -> None:
        with self.db.transaction() as tx:
            tx.execute(delete(JobLeaseRow).where(JobLeaseRow.job_key == key,
                                                 JobLeaseRow.owner == owner))

    def renew(self, owner_prefix: str, *, sessions: set[tuple[str, str]],
              write_keys: set[tuple[str, str]], write_lease: timedelta) -> None:
        """The heartbeat: extend this process's job leases, and the write-ledger leases of
        the writes its running jobs perform (by session for finish_version, by key for
        execute_write), so a live worker never loses a short lease."""
        now = self.clock.now()
        with self.db.transaction() as tx:
            tx.execute(update(JobLeaseRow).where(JobLeaseRow.owner.startswith(owner_prefix))
                       .values(expires_at=now + self.lease))
            for org_id, session_id in sessions:
                tx.execute(update(WriteRow).where(
                    WriteRow.org_id == org_id, WriteRow.session_id == session_id,
                    WriteRow.status == "in_flight", WriteRow.lease_owner.is_not(None))
                    .values(lease_expires_at=now + write_lease))
            for org_id, key in write_keys:
                tx.execute(update(WriteRow).where(
                    WriteRow.org_id == org_id, WriteRow.key == key,
                    WriteRow.status == "in_flight", WriteRow.lease_owner.is_not(None))
                    .values(lease_expires_at=now + write_lease))

    def live(self) -> set[str]:
        with self.db.transaction() as tx:
            return set(tx.scalars(select(JobLeaseRow.job_key).where(
                JobLeaseRow.expires_at >= self.clock.now())))

    def purge_expired(self) -> int:
        with self.db.transaction() as tx:
            return tx.execute(delete(JobLeaseRow).where(
                JobLeaseRow.expires_at < self.clock.now())).rowcount or 0
