#!/usr/bin/env bash
# Install everything the suite needs that is missing, then run it against real PostgreSQL and Redis
# (127.0.0.1:5432 / :6379 by default; throwaway servers are started when those do not answer).
#   scripts/test.sh [pytest args]     set up, then run pytest
#   scripts/test.sh --setup-only      set up only (.ci/run does this before ruff)
# Set-up: .venv with the dev extra and the tests' S3 server (scripts/install.sh), Label Studio in its own venv
# (tests/test_label_studio.py), and the system packages: Debian's chromium (the browser tests) and libfaketime
# (tests/worker/test_clock_skew.py), installed with apt-get when this runs as root; otherwise it stops with one line
# naming the command to run.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install.sh
scripts/install-label-studio.sh

missing=()
[ -x /usr/bin/chromium ] || missing+=(chromium)
ls /usr/lib/*/faketime/libfaketimeMT.so.1 >/dev/null 2>&1 || missing+=(libfaketime)
if [ "${#missing[@]}" -gt 0 ]; then
  if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "scripts/test.sh: installing ${missing[*]} (apt-get)" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    echo "scripts/test.sh: the tests need ${missing[*]}; run: sudo apt-get install -y ${missing[*]}" >&2
    exit 1
  fi
fi

if [ "${1:-}" = "--setup-only" ]; then
  exit 0
fi
exec .venv/bin/python -m pytest "$@"
