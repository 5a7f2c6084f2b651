"""webhooks.secret: wide enough for a sealed secret, and the stored plain-text secrets sealed

``webhooks.secret`` holds the signing secret encrypted with TAGSIFT_SECRET_KEYS' newest key (``app.secretbox``,
about 130 characters); the column grows from 100 to 400 characters. When keys are configured, existing plain-text
secrets are sealed here; without keys they stay plain text (``tagsift reencrypt-secrets`` seals them later). The
downgrade opens sealed secrets again (it needs the keys) and narrows the column back.

Revision ID: 0015
Revises: 0011
Create Date: 2026-12-08 02:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from app import secretbox

revision: str = "0015"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_hooks = sa.table("webhooks", sa.column("id", sa.String), sa.column("secret", sa.String))


def _rewrite(convert) -> None:
    bind = op.get_bind()
    for hook_id, secret in bind.execute(sa.select(_hooks.c.id, _hooks.c.secret)).all():
        new = convert(secret)
        if new != secret:
            bind.execute(_hooks.update().where(_hooks.c.id == hook_id).values(secret=new))


def upgrade() -> None:
    # SQLite does not enforce VARCHAR lengths: only PostgreSQL needs the wider type (no table rebuild on SQLite)
    if op.get_bind().dialect.name != "sqlite":
        op.alter_column("webhooks", "secret", type_=sa.String(400), existing_type=sa.String(100))
    if secretbox.keys():
        _rewrite(lambda s: s if secretbox.is_sealed(s) else secretbox.seal(s))


def downgrade() -> None:
    _rewrite(secretbox.unseal)
    if op.get_bind().dialect.name != "sqlite":
        op.alter_column("webhooks", "secret", type_=sa.String(100), existing_type=sa.String(400))
