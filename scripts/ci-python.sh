#!/usr/bin/env bash
# The Python packages the tests drive lcm serve with (the official `openai` client: tests/serve_inpaint.rs),
# pinned, in a venv at target/ci-python (or $LCM_CI_PYTHON_VENV). Idempotent and quick when already
# installed (the pinned version is checked, nothing is fetched); pip's cache makes a fresh venv fast.
# Prints the venv's python.
set -euo pipefail
cd "$(dirname "$0")/.."
OPENAI_VERSION=3.57.0
VENV="${LCM_CI_PYTHON_VENV:-target/ci-python}"
PY="$VENV/bin/python"
have() { [ -x "$PY" ] && "$PY" -c "import sys, importlib.metadata as m, openai; sys.exit(m.version('openai') != '$OPENAI_VERSION')" 2>/dev/null; }
if ! have; then
    python3 -m venv "$VENV"
    "$PY" -m pip install -q --disable-pip-version-check "openai==$OPENAI_VERSION" >&2
    have || { echo "ci-python.sh: openai==$OPENAI_VERSION did not install into $VENV" >&2; exit 1; }
fi
echo "$PY"
