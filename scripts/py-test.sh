#!/usr/bin/env bash
# The Python module (crates/lcm-py) built and tested, as scripts/test.sh runs it after `cargo test`:
# maturin builds lcm/_native.abi3.so in place (crates/lcm-py/python/lcm) with the test profile, whose
# engine rlibs `cargo test` already compiled (no second engine build; a clean run compiles only pyo3,
# numpy and the module), then pytest runs crates/lcm-py/tests against it. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=$(scripts/py-venv.sh)
VENV=$(cd "$(dirname "$PY")/.." && pwd)
# The same profile and environment `cargo test` built with, so its fingerprints match.
VIRTUAL_ENV="$VENV" PYO3_PYTHON="$VENV/bin/python" "$VENV/bin/maturin" develop --skip-install \
    --profile test -m crates/lcm-py/Cargo.toml -q
PYTHONPATH="$PWD/crates/lcm-py/python" "$PY" -m pytest -q -p no:cacheprovider crates/lcm-py/tests "$@"
