#!/usr/bin/env bash
# The Python packages the Python module's tests need (pytest, numpy, Pillow), pinned, in a venv at
# target/py-venv (or $LCM_PY_VENV). No maturin: scripts/py-test.sh builds the extension with cargo (pip
# fetches maturin itself for `pip install ./crates/lcm-py`). Idempotent and quick when already installed
# (the pinned versions are checked, nothing is fetched); pip's cache makes a fresh venv fast. No
# diffusers or torch: the tests compare with outputs recorded from diffusers (tests/fixtures/records).
# Prints the venv's python (an absolute path).
set -euo pipefail
cd "$(dirname "$0")/.."
PINS=(pytest==9.2.0 numpy==2.4.6 Pillow==13.0.0)
VENV="${LCM_PY_VENV:-target/py-venv}"
PY="$VENV/bin/python"
have() {
    [ -x "$PY" ] && "$PY" - "${PINS[@]}" 2>/dev/null <<'PYEOF'
import sys, importlib.metadata as m
sys.exit(any(m.version(n) != v for n, v in (p.split("==") for p in sys.argv[1:])))
PYEOF
}
if ! have; then
    python3 -m venv "$VENV"
    "$PY" -m pip install -q --disable-pip-version-check "${PINS[@]}" >&2
    have || { echo "py-venv.sh: ${PINS[*]} did not install into $VENV" >&2; exit 1; }
fi
echo "$(cd "$VENV" && pwd)/bin/python"
