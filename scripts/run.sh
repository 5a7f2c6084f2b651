#!/usr/bin/env bash
# Install (if needed) and run tagsift in its embedded default: SQLite under ./var, an embedded SQLite broker,
# one API process (http://127.0.0.1:8000, docs at /docs) and one Celery worker process. Ctrl-C stops both.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install.sh
exec .venv/bin/tagsift up "$@"
