"""items: drop ix_items_dataset_id and ix_items_seq, both served by ix_items_dataset_seq

Every query on items names its dataset, so the (dataset_id, seq) index serves what these two did, the cascade
delete from datasets included. ``ix_items_seq`` alone (seq is an order within a dataset, not across datasets) also
let PostgreSQL plan an upload-order page as a scan of every dataset's items filtered to one, when one dataset held
most of the table. Dropping an index loses no row; the downgrade builds both again.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-03 13:30:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # plain DROP INDEX on both databases (no batch mode: SQLite would not rebuild the table for it anyway, and a
    # rebuild must never touch the expression indexes of 0007)
    op.drop_index("ix_items_seq", table_name="items")
    op.drop_index("ix_items_dataset_id", table_name="items")


def downgrade() -> None:
    op.create_index("ix_items_dataset_id", "items", ["dataset_id"], unique=False)
    op.create_index("ix_items_seq", "items", ["seq"], unique=False)
