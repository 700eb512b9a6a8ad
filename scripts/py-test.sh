#!/usr/bin/env bash
# The Python module (crates/lcm-py) built and tested, as scripts/test.sh runs it after `cargo test`.
#
# The extension is built by cargo from the rlibs `cargo test --workspace` compiled: the same workspace,
# target selection and profile, so the same feature unification and fingerprints (a build of lcm-py alone
# unifies features differently, e.g. serde_json's, and would rebuild the engine). Only pyo3, numpy and
# lcm-py compile. The library is linked into the package as lcm/_native.abi3.so and pytest runs
# crates/lcm-py/tests against it. It links libpython as an embedding would (not the extension-module
# way maturin builds wheels): fine for the interpreter it was built for, and for the tests only; `pip
# install ./crates/lcm-py` builds the real wheel. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=$(scripts/py-venv.sh)
PYO3_PYTHON="$PY" cargo build --workspace --profile test --locked --lib --bins --tests --examples
# A link, not a copy: the library is some 80 MB and CI's disk is tight.
ln -sfn "$PWD/target/debug/lib_native.so" crates/lcm-py/python/lcm/_native.abi3.so
LCM_BIN="$PWD/target/debug/lcm" PYTHONPATH="$PWD/crates/lcm-py/python" \
    "$PY" -m pytest -q -p no:cacheprovider crates/lcm-py/tests "$@"
