"""datasets.item_count and review_count: the item lists' totals without a count(*) per page

Both are filled from the items already stored (no row changes otherwise); the downgrade drops them.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-03 14:10:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("datasets", sa.Column("item_count", sa.BigInteger(), server_default="0", nullable=False))
    op.add_column("datasets", sa.Column("review_count", sa.BigInteger(), server_default="0", nullable=False))
    op.execute(
        "UPDATE datasets SET"
        " item_count = (SELECT count(*) FROM items WHERE items.dataset_id = datasets.id),"
        " review_count = (SELECT count(*) FROM items WHERE items.dataset_id = datasets.id AND items.needs_review)"
    )


def downgrade() -> None:
    # ALTER TABLE ... DROP COLUMN (SQLite 3.35+). Never batch mode here: on SQLite it rebuilds the table by copying
    # it and dropping the old one, and dropping datasets would cascade to every item (ON DELETE CASCADE).
    op.drop_column("datasets", "review_count")
    op.drop_column("datasets", "item_count")
