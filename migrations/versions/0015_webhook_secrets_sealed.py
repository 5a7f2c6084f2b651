"""webhooks.secret: the stored plain-text signing secrets sealed with TAGSIFT_SECRET_KEYS (no schema change)

The sealed form (``app.secretbox``, 96 characters for a webhook secret) fits the column. When keys are configured,
every plain-text secret is sealed with the newest one; without keys they stay plain text (``tagsift
reencrypt-secrets`` seals them once keys are set). The downgrade opens sealed secrets again (it needs the keys).

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-08 02:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from app import secretbox

revision: str = "0015"
down_revision: str | None = "0014"
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
    if secretbox.keys():
        _rewrite(lambda s: s if secretbox.is_sealed(s) else secretbox.seal(s))


def downgrade() -> None:
    _rewrite(secretbox.unseal)
