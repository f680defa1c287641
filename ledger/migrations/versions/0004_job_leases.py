"""job leases (issue 20: recovery in seconds)

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01 09:40:00

"""
from alembic import op
import sqlalchemy as sa
import chartbridge.ledger.tables


revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'job_leases',
        sa.Column('job_key', sa.String(length=400), nullable=False),
        sa.Column('org_id', sa.String(length=64), nullable=False),
        sa.Column('owner', sa.String(length=100), nullable=False),
        sa.Column('expires_at', chartbridge.ledger.tables.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint('job_key'),
    )


def downgrade() -> None:
    op.drop_table('job_leases')
