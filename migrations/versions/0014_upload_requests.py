"""upload_requests: the Idempotency-Key of uploads (POST /datasets, POST /datasets/{id}/items)

A new table (no existing row changes); the downgrade drops it.

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-08 02:10:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0014"
down_revision: str | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "upload_requests",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("owner_id", sa.String(length=32), nullable=False),
        sa.Column("dataset_id", sa.String(length=32), nullable=False),
        sa.Column("idempotency_key", sa.String(length=200), nullable=False),
        sa.Column("request_hash", sa.String(length=64), nullable=False),
        sa.Column("response", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["owner_id"], ["owners.id"], name=op.f("fk_upload_requests_owner_id_owners"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["dataset_id"], ["datasets.id"], name=op.f("fk_upload_requests_dataset_id_datasets"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_upload_requests")),
        sa.UniqueConstraint("owner_id", "idempotency_key", name=op.f("uq_upload_requests_owner_id_idempotency_key")),
    )
    op.create_index(op.f("ix_upload_requests_dataset_id"), "upload_requests", ["dataset_id"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_upload_requests_dataset_id"), table_name="upload_requests")
    op.drop_table("upload_requests")
