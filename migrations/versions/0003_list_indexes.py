"""list pages on indexes: (owner, created_at, id) for datasets, jobs and models; (dataset, seq) for items

Every list endpoint pages by keyset (``created_at, id`` after the cursor; items by ``seq``), so each page is an
index range scan, however many rows the owner has.

Revision ID: 0003
Revises: 0002
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

INDEXES = {
    "ix_datasets_owner_created": ("datasets", ["owner_id", "created_at", "id"]),
    "ix_jobs_owner_created": ("jobs", ["owner_id", "created_at", "id"]),
    "ix_models_owner_created": ("models", ["owner_id", "created_at", "id"]),
    "ix_items_dataset_seq": ("items", ["dataset_id", "seq"]),
}


def upgrade() -> None:
    for name, (table, columns) in INDEXES.items():
        op.create_index(name, table, columns)


def downgrade() -> None:
    for name, (table, _) in INDEXES.items():
        op.drop_index(name, table_name=table)
