"""jobs: where the tokenized training set is stored (download-tokenized-dataset)

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import tunery.store.models

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("jobs", sa.Column("tokenized_dataset_key", sa.String(length=512), nullable=True))
    op.add_column("jobs", sa.Column("tokenized_dataset_size", sa.BigInteger(), nullable=False, server_default="0"))
    op.add_column("jobs", sa.Column("tokenized_dataset_uploaded_at", tunery.store.models.UTCDateTime(timezone=True),
                                    nullable=True))


def downgrade() -> None:
    for name in ("tokenized_dataset_uploaded_at", "tokenized_dataset_size", "tokenized_dataset_key"):
        op.execute(f"ALTER TABLE jobs DROP COLUMN {name}")
