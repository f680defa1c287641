"""job leases (issue 20: recovery in seconds)

Revision ID: i20_job_leases
Revises: 0002
Create Date: 2026-12-01 09:40:00

The lead renumbers this into the chain when merging (another branch adds a 0003).
"""
from alembic import op
import sqlalchemy as sa
import chartbridge.ledger.tables


revision = 'i20_job_leases'
down_revision = '0002'
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
