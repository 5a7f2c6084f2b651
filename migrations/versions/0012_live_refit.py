"""Live refit: datasets.decision_seq and quality, items.refit_revision, the refits table, models.job_id nullable

A live refit (app.services.refits, worker.refit) stores a model revision without a job of its own, so
models.job_id becomes nullable. The downgrade drops what the upgrade added and the refit revisions with it.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-08 02:10:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("datasets", sa.Column("decision_seq", sa.BigInteger(), server_default="0", nullable=False))
    op.add_column("datasets", sa.Column("quality", sa.JSON(), nullable=True))
    op.add_column("items", sa.Column("refit_revision", sa.BigInteger(), nullable=True))
    # batch mode on SQLite rebuilds models by copy; no table refers to models by a foreign key, so nothing cascades
    with op.batch_alter_table("models") as batch:
        batch.alter_column("job_id", existing_type=sa.String(32), nullable=True)
    op.create_table(
        "refits",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("dataset_id", sa.String(32), nullable=False),
        sa.Column("revision", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("base_model_id", sa.String(32), nullable=True),
        sa.Column("model_id", sa.String(32), nullable=True),
        sa.Column("decision_seq", sa.BigInteger(), nullable=True),
        sa.Column("reviewed_items", sa.Integer(), nullable=True),
        sa.Column("audited_items", sa.Integer(), nullable=True),
        sa.Column("changed_items", sa.Integer(), nullable=True),
        sa.Column("seconds", sa.Float(), nullable=True),
        sa.Column("quality", sa.JSON(), nullable=True),
        sa.Column("error_code", sa.String(64), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["dataset_id"], ["datasets.id"], name=op.f("fk_refits_dataset_id_datasets"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_refits")),
        sa.UniqueConstraint("dataset_id", "revision", name=op.f("uq_refits_dataset_id_revision")),
    )
    op.create_index("ix_refits_dataset_status", "refits", ["dataset_id", "status"])


def downgrade() -> None:
    op.drop_index("ix_refits_dataset_status", table_name="refits")
    op.drop_table("refits")
    op.execute("DELETE FROM models WHERE job_id IS NULL")
    with op.batch_alter_table("models") as batch:
        batch.alter_column("job_id", existing_type=sa.String(32), nullable=False)
    # ALTER TABLE ... DROP COLUMN (SQLite 3.35+), never batch mode on datasets or items (see 0011)
    op.drop_column("items", "refit_revision")
    op.drop_column("datasets", "quality")
    op.drop_column("datasets", "decision_seq")
