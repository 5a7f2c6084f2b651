"""item_reviews.source_ref: the outside decision (a Label Studio annotation) a reviewer tag came from

A Label Studio annotation that is deleted there undoes the tag it set here (ANNOTATIONS_DELETED names only the
annotation ids). A new nullable column: no row changes; the downgrade drops it.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-03 13:45:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("item_reviews", sa.Column("source_ref", sa.String(length=200), nullable=True))
    op.create_index("ix_item_reviews_source_ref", "item_reviews", ["source_ref"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_item_reviews_source_ref", table_name="item_reviews")
    op.drop_column("item_reviews", "source_ref")  # ALTER TABLE ... DROP COLUMN (SQLite 3.35+), no table rebuild
