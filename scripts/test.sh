#!/usr/bin/env bash
# The test suite, as CI runs it: installs nvcc 13.0 into .toolchain/ if needed (so every CUDA kernel is
# compiled for every listed architecture, LCM_REQUIRE_CUDA=1), then runs every test of the workspace.
# GPU tests print SKIPPED with the reason when no GPU is present.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-nvcc.sh
export LCM_REQUIRE_CUDA=1
cargo test --workspace --locked "$@"
# A service embeds the library without the CLI's dependencies (`default-features = false`): keep that building.
cargo check --lib --no-default-features --locked
# The fuzz targets (fuzz/, their own workspace) call the loaders' APIs: a change to those must keep them
# compiling. A plain check on the stable toolchain, CPU-only like the fuzz builds (LCM_NO_CUDA=1, so not
# under this script's LCM_REQUIRE_CUDA=1); scripts/fuzz.sh runs them.
env -u LCM_REQUIRE_CUDA LCM_NO_CUDA=1 cargo check --manifest-path fuzz/Cargo.toml --locked --bins
