#!/usr/bin/env bash
# Breaks the kernels on purpose, one way at a time, and checks that the emulated GPU tests catch each
# break (the emulation issue's sabotage list, and the f32 VAE path's; results in docs/kernels.md). Works in a throwaway git
# worktree of HEAD, so the checkout is never touched (commit what you want tested first); builds with
# LCM_EMULATOR_ONLY=1 (no nvcc compiles) into target/sabotage. Prints one line per sabotage: CAUGHT with
# the first failure the tests reported, or MISSED. Exits 1 if any was missed.
#
#   scripts/sabotage.sh            all of them (~2 minutes after the first build)
#   scripts/sabotage.sh NAME...    only those (names as printed)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
scripts/install-nvcc.sh >/dev/null  # the emulator compiles against the CUDA headers nvcc brings
wt=$(mktemp -d /tmp/lcm-sabotage.XXXXXX)
git worktree add -q --detach "$wt" HEAD
trap 'git -C "$root" worktree remove --force "$wt"' EXIT
ln -s "$root/.toolchain" "$wt/.toolchain"
# The start-up self-check would refuse most breaks before any test runs: skip it, so that each named
# test must catch its break by itself (the self-check's own coverage is smoke_every_family's).
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$root/target/sabotage} LCM_EMULATOR_ONLY=1 LCM_TEST_DEVICE=emulated
export LCM_SKIP_SELF_CHECK=1
wanted=("$@")
missed=0

# sabotage NAME FILE OLD NEW TEST [FILTER...]: replaces the one occurrence of OLD in FILE with NEW, runs
# the TEST suite (gpu_kernels, …) with the filters, expects it to fail, restores FILE.
sabotage() {
    local name=$1 file=$2 old=$3 new=$4 suite=$5
    shift 5
    if [ ${#wanted[@]} -gt 0 ] && [[ " ${wanted[*]} " != *" $name "* ]]; then return; fi
    python3 - "$wt/$file" "$old" "$new" <<'EOF'
import sys
path, old, new = sys.argv[1:4]
text = open(path).read()
if text.count(old) != 1:
    sys.exit(f"{path}: expected exactly one occurrence of {old!r}, found {text.count(old)}")
open(path, "w").write(text.replace(old, new))
EOF
    local log="$CARGO_TARGET_DIR/sabotage-$name.log"
    mkdir -p "$CARGO_TARGET_DIR"
    if (cd "$wt" && cargo test -q --locked --test "$suite" -- "$@") >"$log" 2>&1; then
        printf '%-26s MISSED: %s %s passed with the break in %s\n' "$name" "$suite" "$*" "$file"
        missed=1
    else
        local why
        why=$(grep -m1 -E "FAILED case|panicked at|error(\[|:)" "$log" -A1 | tr '\n' ' ' | cut -c1-240)
        printf '%-26s CAUGHT by %s: %s\n' "$name" "$suite" "$why"
    fi
    git -C "$wt" checkout -q -- "$file"
}

echo "building the emulator in $wt (first run: a few minutes)..."
(cd "$wt" && cargo test -q --locked --no-run --test gpu_kernels --test backend_ops >/dev/null 2>&1)

sabotage mma-a-fragment-row kernels/emulate/ptx.cpp \
    'A[g][2 * t + e] = h2f(half_of(s.a[0], e));' 'A[g][2 * t + e] = h2f(half_of(s.a[1], e));' \
    gpu_kernels smoke_every_family linear_matches_cpu
sabotage dropped-cp-async-wait kernels/gemm.cu \
    'dev::cp_async_wait<STAGES - 2>();' '' \
    gpu_kernels smoke_every_family linear_matches_cpu
sabotage gemm-overhang-off-by-one kernels/gemm.cu \
    'brow[i] = n >= N ? -1' 'brow[i] = n > N ? -1' \
    gpu_kernels smoke_every_family linear_matches_cpu
sabotage softmax-rescale kernels/attention.cu \
    'const float alpha = exp2f(mrow[r] - m_use);' 'const float alpha = exp2f(0.5f * (mrow[r] - m_use));' \
    gpu_kernels attention_matches_cpu
sabotage smem-one-row-short src/cuda/ops/gemm.rs \
    'GEMM_STAGES * (bm + bn) * GEMM_ROW_BYTES' '(GEMM_STAGES * (bm + bn) - 1) * GEMM_ROW_BYTES' \
    gpu_kernels smoke_every_family linear_matches_cpu
sabotage group-norm-last-pixel kernels/norm.cu \
    'for (int px = p0 + row; px < p1; px += rows) {
        float v[V];
        dev::load_vec<V>(xb' 'for (int px = p0 + row; px < p1 - 1; px += rows) {
        float v[V];
        dev::load_vec<V>(xb' \
    gpu_kernels group_norm_matches_cpu
# The f32 (force_upcast VAE) instantiations: P handed to P·V in the wrong key order, and a tf32 k-step
# that skips half of each 16-byte chunk.
sabotage tf32-attention-p-order kernels/attention.cu \
    'dev::to_tf32(dev::f32_bits(s[0][2])),
                               dev::to_tf32(dev::f32_bits(s[0][1]))' 'dev::to_tf32(dev::f32_bits(s[0][1])),
                               dev::to_tf32(dev::f32_bits(s[0][2]))' \
    gpu_kernels smoke_every_family f32_activations_match_cpu
sabotage tf32-gemm-k-step kernels/gemm.cu \
    'static constexpr int KSTEP = 2 * kVec;' 'static constexpr int KSTEP = 2 * kVec * (sizeof(E) == 4 ? 2 : 1);' \
    gpu_kernels smoke_every_family f32_activations_match_cpu
# The generic every-op test, one side at a time: the add functor's sign on the device, then in the CPU's
# closure (the reference itself wrong: CUDA and CPU must still disagree).
sabotage map-add-sign-device kernels/eltwise.cu \
    'case LCM_MAP_ADD: return binary<V, E>(p, [](float x, float y) { return x + y; });' \
    'case LCM_MAP_ADD: return binary<V, E>(p, [](float x, float y) { return x - y; });' \
    backend_ops every_op_matches_cpu
sabotage map-add-sign-cpu crates/lcm-cpu/src/eltwise.rs \
    'MapKind::Add => binary(x, y(), out, |a, b| a + b),' 'MapKind::Add => binary(x, y(), out, |a, b| a - b),' \
    backend_ops every_op_matches_cpu
exit $missed
