"""API keys, job ownership, idempotency keys scoped per API key

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02 18:10:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import dreamforge.db.tables

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "api_keys",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("shown", sa.String(length=40), nullable=False),
        sa.Column("digest", sa.String(length=64), nullable=False),
        sa.Column("admin", sa.Boolean(), nullable=False),
        sa.Column("max_active_jobs", sa.Integer(), nullable=True),
        sa.Column("max_images_per_day", sa.Integer(), nullable=True),
        sa.Column("created_at", dreamforge.db.tables.UtcDateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", dreamforge.db.tables.UtcDateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("digest"),
        sa.UniqueConstraint("name"),
    )
    with op.batch_alter_table("jobs") as batch_op:
        batch_op.add_column(sa.Column("api_key_id", sa.Uuid(), nullable=True))
        batch_op.create_index("ix_jobs_api_key_id", ["api_key_id"], unique=False)
        batch_op.create_foreign_key("fk_jobs_api_key_id", "api_keys", ["api_key_id"], ["id"])
        batch_op.alter_column(
            "idempotency_key", existing_type=sa.String(length=255), type_=sa.String(length=300)
        )


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch_op:
        batch_op.alter_column(
            "idempotency_key", existing_type=sa.String(length=300), type_=sa.String(length=255)
        )
        batch_op.drop_constraint("fk_jobs_api_key_id", type_="foreignkey")
        batch_op.drop_index("ix_jobs_api_key_id")
        batch_op.drop_column("api_key_id")
    op.drop_table("api_keys")
