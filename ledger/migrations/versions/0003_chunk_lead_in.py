"""chunk lead-in flag: was the chunk transcribed with the audio before it?

A chunk whose predecessor had not arrived yet is transcribed on its own at once (nothing
waits on a neighbour) and flagged, so the version's final pass transcribes it again with
its lead-in and no words are lost at the boundary. Rows from before this flag were all
transcribed in order, hence the server default.

Revision ID: 0003
Revises: 0002
"""
from alembic import op
import sqlalchemy as sa


revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('chunks', schema=None) as batch_op:
        batch_op.add_column(sa.Column('lead_in', sa.Boolean(), server_default=sa.true(),
                                      nullable=False))


def downgrade() -> None:
    with op.batch_alter_table('chunks', schema=None) as batch_op:
        batch_op.drop_column('lead_in')
