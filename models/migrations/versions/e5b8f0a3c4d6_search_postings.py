"""search_postings: the blind index as compact posting lists (issue #15)

Replaces search_tokens (one row per message and token, 26x the sealed text) with
search_conversations (a short reference per conversation, the row its index writers lock) and
search_postings (one row per conversation, bucket of tokens and segment of seqs). Tokens are
derived under a new key label (v2), so the old rows cannot be converted: they are dropped, and
the index stage is queued again through the outbox for every moderated message that still has
text (100 per row, per conversation); the sweeper sends them once they are
PARLEY_OUTBOX_STALE_S old, and search finds each message again once its row has run.

Revision ID: e5b8f0a3c4d6
Revises: d4a7e9c1f2b3
Create Date: 2026-12-03 12:00:00.000000
"""

from collections.abc import Sequence
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision: str = 'e5b8f0a3c4d6'
down_revision: str | None = 'd4a7e9c1f2b3'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

INDEX_TASK = 'tasks.index.index_messages'
CHUNK = 100


def upgrade() -> None:
    op.drop_index('ix_search_tokens_token', table_name='search_tokens')
    op.drop_table('search_tokens')
    op.create_table(
        'search_conversations',
        sa.Column('ref', sa.Integer(), autoincrement=True, nullable=False),
        sa.Column('conversation_id', sa.String(length=26), nullable=False),
        sa.ForeignKeyConstraint(
            ['conversation_id'],
            ['conversations.id'],
            name=op.f('fk_search_conversations_conversation_id_conversations'),
            ondelete='CASCADE',
        ),
        sa.PrimaryKeyConstraint('ref', name=op.f('pk_search_conversations')),
        sa.UniqueConstraint(
            'conversation_id', name=op.f('uq_search_conversations_conversation_id')
        ),
    )
    op.create_table(
        'search_postings',
        sa.Column('ref', sa.Integer(), autoincrement=False, nullable=False),
        sa.Column('bucket', sa.SmallInteger(), autoincrement=False, nullable=False),
        sa.Column('segment', sa.Integer(), autoincrement=False, nullable=False),
        sa.Column('data', sa.LargeBinary(), nullable=False),
        sa.ForeignKeyConstraint(
            ['ref'],
            ['search_conversations.ref'],
            name=op.f('fk_search_postings_ref_search_conversations'),
            ondelete='CASCADE',
        ),
        sa.PrimaryKeyConstraint('ref', 'bucket', 'segment', name=op.f('pk_search_postings')),
        sqlite_with_rowid=False,
    )
    _requeue()


def _requeue() -> None:
    """One index-stage outbox row per CHUNK indexable messages of each conversation."""
    conn = op.get_bind()
    rows = conn.execute(
        sa.text(
            'SELECT conversation_id, id FROM messages WHERE text_ct IS NOT NULL '
            'AND deleted_at IS NULL AND expired_at IS NULL '
            'AND moderation_action IS NOT NULL ORDER BY conversation_id, seq'
        )
    )
    outbox = sa.table(
        'outbox',
        sa.column('task', sa.String),
        sa.column('args', sa.JSON),
        sa.column('ref_id', sa.String),
        sa.column('attempts', sa.Integer),
        sa.column('created_at', sa.DateTime),
    )
    now = datetime.now(UTC)
    pending: list[dict[str, object]] = []
    cid: str | None = None
    ids: list[str] = []

    def flush_chunk() -> None:
        if ids:
            pending.append(
                {'task': INDEX_TASK, 'args': [cid, list(ids)], 'ref_id': ids[0], 'attempts': 0,
                 'created_at': now}
            )
            ids.clear()
        if len(pending) >= 500:
            conn.execute(sa.insert(outbox), pending)
            pending.clear()

    for row_cid, mid in rows:
        if row_cid != cid or len(ids) >= CHUNK:
            flush_chunk()
            cid = row_cid
        ids.append(mid)
    flush_chunk()
    if pending:
        conn.execute(sa.insert(outbox), pending)


def downgrade() -> None:
    op.drop_table('search_postings')
    op.drop_table('search_conversations')
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
