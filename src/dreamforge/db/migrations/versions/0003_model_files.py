"""model files: each installed file of a model with its size and SHA-256, for `model verify`

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-22 05:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("models", schema=None) as batch_op:
        # Rows registered before this revision get an empty list; `model verify` then re-lists the folder.
        batch_op.add_column(sa.Column("files", sa.JSON(), nullable=False, server_default=sa.text("'[]'")))


def downgrade() -> None:
    with op.batch_alter_table("models", schema=None) as batch_op:
        batch_op.drop_column("files")
