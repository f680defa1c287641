"""webhooks: the event outbox and per-subscriber deliveries (issue 16, part 3)

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01 15:50:00
"""
from alembic import op
import sqlalchemy as sa
import chartbridge.ledger.tables


revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'webhook_events',
        sa.Column('id', sa.String(length=64), nullable=False),
        sa.Column('org_id', sa.String(length=64), nullable=False),
        sa.Column('type', sa.String(length=64), nullable=False),
        sa.Column('session_id', sa.String(length=32), nullable=True),
        sa.Column('subject', sa.String(length=200), nullable=True),
        sa.Column('body', sa.JSON(), nullable=False),
        sa.Column('fanned_out', sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column('created_at', chartbridge.ledger.tables.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint('id'),
    )
    op.create_index('ix_webhook_events_org_id', 'webhook_events', ['org_id'])
    op.create_index('ix_webhook_events_fanout', 'webhook_events', ['fanned_out', 'created_at'])
    op.create_index('ix_webhook_events_subject', 'webhook_events', ['org_id', 'subject', 'type'])
    op.create_table(
        'webhook_deliveries',
        sa.Column('id', sa.String(length=64), nullable=False),
        sa.Column('org_id', sa.String(length=64), nullable=False),
        sa.Column('event_id', sa.String(length=64), nullable=False),
        sa.Column('subscriber', sa.String(length=64), nullable=False),
        sa.Column('status', sa.String(length=16), nullable=False),
        sa.Column('attempts', sa.Integer(), nullable=False),
        sa.Column('last_status_code', sa.Integer(), nullable=True),
        sa.Column('last_error', sa.String(length=200), nullable=True),
        sa.Column('lease_owner', sa.String(length=64), nullable=True),
        sa.Column('lease_expires_at', chartbridge.ledger.tables.UTCDateTime(timezone=True), nullable=True),
        sa.Column('next_attempt_at', chartbridge.ledger.tables.UTCDateTime(timezone=True), nullable=True),
        sa.Column('delivered_at', chartbridge.ledger.tables.UTCDateTime(timezone=True), nullable=True),
        sa.Column('created_at', chartbridge.ledger.tables.UTCDateTime(timezone=True), nullable=False),
        sa.Column('updated_at', chartbridge.ledger.tables.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(['event_id'], ['webhook_events.id']),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('event_id', 'subscriber'),
    )
    op.create_index('ix_webhook_deliveries_org_status', 'webhook_deliveries', ['org_id', 'status'])
    op.create_index('ix_webhook_deliveries_due', 'webhook_deliveries', ['status', 'next_attempt_at'])


def downgrade() -> None:
    op.drop_table('webhook_deliveries')
    op.drop_table('webhook_events')
