#!/usr/bin/env bash
# Install (if needed) and run the whole test suite against real PostgreSQL and Redis
# (127.0.0.1:5432 / :6379 by default; throwaway servers are started when those do not answer).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install.sh
exec .venv/bin/python -m pytest "$@"
