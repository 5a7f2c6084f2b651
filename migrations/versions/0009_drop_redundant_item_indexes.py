"""items: drop ix_items_dataset_id, ix_items_seq and ix_items_needs_review, served by the (dataset_id, ...) indexes

Every query on items names its dataset, so ``ix_items_dataset_seq`` and the review indexes (dataset_id, then
needs_review) serve what these three did, the cascade delete from datasets included. Alone, they also misled
PostgreSQL's planner: ``ix_items_seq`` (seq is an order within a dataset, not across datasets) planned an
upload-order page as a scan of every dataset's items filtered to one, and ``ix_items_needs_review`` a review page as
every dataset's queue filtered to one and sorted. Dropping an index loses no row; the downgrade builds them again.

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
    op.drop_index("ix_items_needs_review", table_name="items")


def downgrade() -> None:
    op.create_index("ix_items_needs_review", "items", ["needs_review"], unique=False)
    op.create_index("ix_items_dataset_id", "items", ["dataset_id"], unique=False)
    op.create_index("ix_items_seq", "items", ["seq"], unique=False)
