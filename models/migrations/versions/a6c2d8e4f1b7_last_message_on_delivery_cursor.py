"""last_message_id moves from conversations to delivery_cursors (issue #17)

The fan-out already holds the conversation's delivery cursor row; writing the newest
delivered message's id on the conversation's own row made every POST's seq reservation in
that conversation wait for the fan-out's commit on PostgreSQL.

Plain ALTER TABLE on both databases (SQLite has DROP COLUMN since 3.35): a batch rebuild of
`conversations` would drop the table that participants and messages reference with
ON DELETE CASCADE.

Revision ID: a6c2d8e4f1b7
Revises: e5b8f0a3c4d6
Create Date: 2026-12-04 17:00:00.000000
"""

from collections.abc import Sequence

from alembic import op

revision: str = 'a6c2d8e4f1b7'
down_revision: str | None = 'e5b8f0a3c4d6'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute('ALTER TABLE delivery_cursors ADD COLUMN last_message_id VARCHAR(26)')
    op.execute(
        'UPDATE delivery_cursors SET last_message_id = (SELECT c.last_message_id FROM'
        ' conversations c WHERE c.id = delivery_cursors.conversation_id)'
    )
    op.execute('ALTER TABLE conversations DROP COLUMN last_message_id')


def downgrade() -> None:
    op.execute('ALTER TABLE conversations ADD COLUMN last_message_id VARCHAR(26)')
    op.execute(
        'UPDATE conversations SET last_message_id = (SELECT d.last_message_id FROM'
        ' delivery_cursors d WHERE d.conversation_id = conversations.id)'
    )
    op.execute('ALTER TABLE delivery_cursors DROP COLUMN last_message_id')
