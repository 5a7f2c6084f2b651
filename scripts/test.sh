#!/usr/bin/env bash
# Install (if needed) and run the whole test suite against real PostgreSQL and Redis
# (127.0.0.1:5432 / :6379 by default; throwaway servers are started when those do not answer).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install.sh
scripts/install-label-studio.sh  # Label Studio in its own venv, for tests/test_label_studio.py
exec .venv/bin/python -m pytest "$@"
