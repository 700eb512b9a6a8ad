#!/usr/bin/env bash
# Regenerates src/cuda/abi_bindings.rs from kernels/include/lcm_abi.h with bindgen (needs libclang:
# Debian's libclang-dev). Run after editing the header; tests/abi.rs fails until you do.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --quiet --lib
out=$(ls -td target/debug/build/lcm-*/out | while read -r d; do [ -s "$d/abi_bindgen.rs" ] && echo "$d" && break; done)
[ -n "$out" ] || { echo "bindgen produced nothing: is libclang installed (apt-get install libclang-dev)?" >&2; exit 1; }
cp "$out/abi_bindgen.rs" src/cuda/abi_bindings.rs
echo "updated src/cuda/abi_bindings.rs from $out"
