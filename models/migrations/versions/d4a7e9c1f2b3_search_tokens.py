"""search_tokens: the blind search index (keyed hashes of message terms, issue #15)

Revision ID: d4a7e9c1f2b3
Revises: c3e1d2a4b5f6
Create Date: 2026-11-28 10:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = 'd4a7e9c1f2b3'
down_revision: str | None = 'c3e1d2a4b5f6'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        'search_tokens',
        sa.Column('conversation_id', sa.String(length=26), nullable=False),
        sa.Column('seq', sa.Integer(), autoincrement=False, nullable=False),
        sa.Column('token', sa.BigInteger(), autoincrement=False, nullable=False),
        sa.ForeignKeyConstraint(
            ['conversation_id', 'seq'],
            ['messages.conversation_id', 'messages.seq'],
            name=op.f('fk_search_tokens_conversation_id_messages'),
            ondelete='CASCADE',
        ),
        sa.PrimaryKeyConstraint('conversation_id', 'seq', 'token', name=op.f('pk_search_tokens')),
        sqlite_with_rowid=False,
    )
    op.create_index('ix_search_tokens_token', 'search_tokens', ['token'], unique=False)


def downgrade() -> None:
    op.drop_index('ix_search_tokens_token', table_name='search_tokens')
    op.drop_table('search_tokens')
