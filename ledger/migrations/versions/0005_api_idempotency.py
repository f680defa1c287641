"""capture API idempotency keys (issue 16)

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01 16:00:00

"""
from alembic import op
import sqlalchemy as sa
import chartbridge.ledger.tables


revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'api_idempotency',
        sa.Column('org_id', sa.String(length=64), nullable=False),
        sa.Column('key', sa.String(length=255), nullable=False),
        sa.Column('fingerprint', sa.String(length=64), nullable=False),
        sa.Column('state', sa.String(length=16), nullable=False),
        sa.Column('status', sa.Integer(), nullable=True),
        sa.Column('response', sa.JSON(), nullable=True),
        sa.Column('created_at', chartbridge.ledger.tables.UTCDateTime(timezone=True), nullable=False),
        sa.Column('expires_at', chartbridge.ledger.tables.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint('org_id', 'key'),
    )


def downgrade() -> None:
    op.drop_table('api_idempotency')
