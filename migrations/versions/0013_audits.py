"""audits and audit_items: the random, stratified samples of a dataset that a person answers blind

Two new tables (no row of another table changes); the downgrade drops them. Audit answers themselves are
item_reviews rows with action "audit".

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-08 02:10:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "audits",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("dataset_id", sa.String(length=32), nullable=False),
        sa.Column("seed", sa.BigInteger(), nullable=False),
        sa.Column("size", sa.Integer(), nullable=False),
        sa.Column("population", sa.Integer(), nullable=False),
        sa.Column("reviewer", sa.String(length=200), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["dataset_id"], ["datasets.id"], name=op.f("fk_audits_dataset_id_datasets"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audits")),
    )
    op.create_index(op.f("ix_audits_dataset_id"), "audits", ["dataset_id"], unique=False)
    op.create_table(
        "audit_items",
        sa.Column("audit_id", sa.String(length=32), nullable=False),
        sa.Column("item_id", sa.String(length=32), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("stratum", sa.String(length=200), nullable=True),
        sa.ForeignKeyConstraint(
            ["audit_id"], ["audits.id"], name=op.f("fk_audit_items_audit_id_audits"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["item_id"], ["items.id"], name=op.f("fk_audit_items_item_id_items"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("audit_id", "item_id", name=op.f("pk_audit_items")),
    )
    op.create_index(op.f("ix_audit_items_item_id"), "audit_items", ["item_id"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_audit_items_item_id"), table_name="audit_items")
    op.drop_table("audit_items")
    op.drop_index(op.f("ix_audits_dataset_id"), table_name="audits")
    op.drop_table("audits")
