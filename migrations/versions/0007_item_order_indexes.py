"""item pages in margin and confidence order on indexes: (dataset, coalesce(score, 2.0), seq)

The margin order (``GET /datasets/{id}/items?order=margin``), the review queue (``needs_review=true&order=margin``)
and the web app's review grid (margin or confidence) sort by ``coalesce(score, 2.0), seq`` and continue after the
cursor's ``(key, seq)``. These expression indexes hold exactly that key, so a page is an index range scan in index
order at any depth, with no sort of the dataset. They replace ``(dataset_id, margin)``, which the coalesced order
never used.

On PostgreSQL ``CREATE INDEX`` blocks writes to ``items`` while it builds the three indexes: run the
migration while no upload or job writes.

Revision ID: 0007
Revises: 0006
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# the expressions exactly as app.models.score_key renders them (a query must spell the same expression)
INDEXES = {
    "ix_items_margin_order": ["dataset_id", "coalesce(margin, 2.0)", "seq"],
    "ix_items_review_margin": ["dataset_id", "needs_review", "coalesce(margin, 2.0)", "seq"],
    "ix_items_review_confidence": ["dataset_id", "needs_review", "coalesce(confidence, 2.0)", "seq"],
}


def upgrade() -> None:
    op.drop_index("ix_items_dataset_margin", table_name="items")
    for name, columns in INDEXES.items():
        op.create_index(name, "items", [sa.text(c) if "(" in c else c for c in columns])


def downgrade() -> None:
    for name in INDEXES:
        op.drop_index(name, table_name="items")
    op.create_index("ix_items_dataset_margin", "items", ["dataset_id", "margin"])
