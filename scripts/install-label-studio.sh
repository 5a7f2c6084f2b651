#!/usr/bin/env bash
# Install Label Studio 1.23.2 into its own virtual environment, var/label-studio-venv, for the integration test
# tests/test_label_studio.py (its dependencies, Django among them, stay out of tagsift's .venv).
# Idempotent: a second run only checks. About 1 GB and 2 minutes the first time; needs Python 3.10 to 3.12.
set -euo pipefail
cd "$(dirname "$0")/.."
VERSION=1.23.2
VENV=var/label-studio-venv
PY="${PYTHON:-$(command -v python3.11 || command -v python3)}"
stamp="$VENV/.label-studio-$VERSION"
if [ -f "$stamp" ] && [ -x "$VENV/bin/label-studio" ]; then
  exit 0
fi
mkdir -p var
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install --quiet --upgrade pip
"$VENV/bin/python" -m pip install --quiet "label-studio==$VERSION"
# never run `label-studio --version` here: it starts a server
"$VENV/bin/python" -c "import importlib.metadata as m; assert m.version('label-studio') == '$VERSION'"
touch "$stamp"
