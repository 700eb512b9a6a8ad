#!/usr/bin/env bash
# The test suite, as CI runs it: installs nvcc 13.0 into .toolchain/ if needed (so every CUDA kernel is
# compiled for every listed architecture, LCM_REQUIRE_CUDA=1), then runs every test of the workspace.
# GPU tests print SKIPPED with the reason when no GPU is present.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-nvcc.sh
export LCM_REQUIRE_CUDA=1
# pyo3 (crates/lcm-py) configures itself from this interpreter: the same one for `cargo test` and the
# build in scripts/py-test.sh, so pyo3 is compiled once.
PYO3_PYTHON=$(scripts/py-venv.sh)
export PYO3_PYTHON
cargo test --workspace --locked "$@"
# The Python module (crates/lcm-py) built from the rlibs the tests just compiled, and its pytest suite
# (docs/python.md, "Tests").
scripts/py-test.sh
# The engine stays below the apps: its dependency tree has no CLI, HTTP or download crates (they belong
# to crates/lcm-cli and crates/lcm-serve; docs/architecture.md).
apps=$(cargo tree -p lcm -e normal --prefix none --locked | grep -oE '^(clap|tokio|axum|hyper|hf-hub|ureq) ' | sort -u | tr -d ' ' | tr '\n' ' ' || true)
if [ -n "$apps" ]; then
    echo "error: the engine package lcm depends on app crates: $apps" >&2
    exit 1
fi
# The fuzz targets (fuzz/, their own workspace) call the loaders' APIs: a change to those must keep them
# compiling. A plain check on the stable toolchain, CPU-only like the fuzz builds (LCM_NO_CUDA=1, so not
# under this script's LCM_REQUIRE_CUDA=1); scripts/fuzz.sh runs them.
env -u LCM_REQUIRE_CUDA LCM_NO_CUDA=1 cargo check --manifest-path fuzz/Cargo.toml --locked --bins
