"""pipeline stages: an item's current stage, and a base artifact beside the final one

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02 18:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

NEW_UNIQUE = "uq_artifacts_job_item_stage"


def _artifacts_batch(old_columns: str) -> tuple[object, str]:
    """A batch over `artifacts` and the name of its (unnamed in 0001) item unique constraint."""
    if op.get_bind().dialect.name == "sqlite":
        # SQLite reflects the constraint without a name: name it by convention to drop it.
        name = f"uq_artifacts_{old_columns}"
        return op.batch_alter_table(
            "artifacts",
            recreate="always",
            naming_convention={"uq": "uq_%(table_name)s_%(column_0_N_name)s"},
        ), name
    # PostgreSQL's own name for it.
    return op.batch_alter_table("artifacts"), f"artifacts_{old_columns}_key"


def upgrade() -> None:
    with op.batch_alter_table("job_items") as batch_op:
        batch_op.add_column(sa.Column("stage", sa.String(length=20), nullable=True))
    batch, old = _artifacts_batch("job_id_item_index")
    with batch as batch_op:  # type: ignore[attr-defined]
        batch_op.add_column(sa.Column("stage", sa.String(length=10), nullable=False, server_default="final"))
        batch_op.drop_constraint(old, type_="unique")
        batch_op.create_unique_constraint(NEW_UNIQUE, ["job_id", "item_index", "stage"])


def downgrade() -> None:
    op.execute(sa.text("DELETE FROM artifacts WHERE stage <> 'final'"))
    with op.batch_alter_table("artifacts") as batch_op:
        batch_op.drop_constraint(NEW_UNIQUE, type_="unique")
        batch_op.create_unique_constraint("artifacts_job_id_item_index_key", ["job_id", "item_index"])
        batch_op.drop_column("stage")
    with op.batch_alter_table("job_items") as batch_op:
        batch_op.drop_column("stage")
