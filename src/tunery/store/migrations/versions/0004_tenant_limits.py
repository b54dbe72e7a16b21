"""multi-tenant limits: cached template scans per file, announced multipart sizes, tokens reserved by
queued jobs, server-side web sessions

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-23 14:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import tunery.store.models

revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('files', schema=None) as batch_op:
        batch_op.add_column(sa.Column('scans', sa.JSON(none_as_null=True), nullable=True))
    # Uploads begun before this revision announced no size: 0 means "bounded by the server's cap".
    with op.batch_alter_table('multipart_uploads', schema=None) as batch_op:
        batch_op.add_column(sa.Column('file_size', sa.BigInteger(), nullable=False, server_default='0'))
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('reserved_tokens', sa.BigInteger(), nullable=False, server_default='0'))
    op.create_table('web_sessions',
    sa.Column('id', sa.String(length=64), nullable=False),
    sa.Column('key_id', sa.String(length=64), nullable=False),
    sa.Column('created_at', tunery.store.models.UTCDateTime(timezone=True), nullable=False),
    sa.Column('expires_at', tunery.store.models.UTCDateTime(timezone=True), nullable=False),
    sa.Column('revoked_at', tunery.store.models.UTCDateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['key_id'], ['api_keys.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('web_sessions', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_web_sessions_key_id'), ['key_id'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('web_sessions', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_web_sessions_key_id'))
    op.drop_table('web_sessions')
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.drop_column('reserved_tokens')
    with op.batch_alter_table('multipart_uploads', schema=None) as batch_op:
        batch_op.drop_column('file_size')
    with op.batch_alter_table('files', schema=None) as batch_op:
        batch_op.drop_column('scans')
