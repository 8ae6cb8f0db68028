"""push subscriptions: verified_at (e-mail addresses confirmed by a mailed code)

Revision ID: c3e1d2a4b5f6
Revises: b85ea3e5c7a4
Create Date: 2026-11-21 20:40:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import models.base

revision: str = 'c3e1d2a4b5f6'
down_revision: str | None = 'b85ea3e5c7a4'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('push_subscriptions', schema=None) as batch_op:
        batch_op.add_column(sa.Column('verified_at', models.base.UTCDateTime(timezone=True), nullable=True))
    # Subscriptions made before verification existed keep working (documented).
    op.execute('UPDATE push_subscriptions SET verified_at = created_at')


def downgrade() -> None:
    with op.batch_alter_table('push_subscriptions', schema=None) as batch_op:
        batch_op.drop_column('verified_at')
