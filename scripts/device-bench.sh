#!/usr/bin/env bash
# The GPU benchmark (issues 5 and 9): lcm against diffusers on PyTorch on the same weights and card, in one
# call, after the device check passed.
#
#   scripts/device-bench.sh build   here: release build with nvcc of `lcm` and the kernel bench, staged in
#                                   .device/bench.tar.xz (stamped); the diffusers wheel in .whl/
#   scripts/device-bench.sh run     there, from the repo root, with .device and .whl carried
#
# `run` first looks for the verdict scripts/device-check.sh left on this (still warm) machine and refuses
# (exit 3, REFUSED in summary.txt) unless it is a full check's PASS: numbers from kernels that compute
# wrong values mislead. LCM_BENCH_ANYWAY=1 runs it regardless (a fresh machine, or timing a known failure).
# Deadline: $LCM_DEADLINE_S (default 330 s); give it the device time left (status: budget_left_s) less
# about 60 s for the machine's start and the transfers, and the call a timeout_s 45 s above it.
#
# What `run` does (one deadline; the tables and the summary last):
#   torch_fullsize   SD1.5-shaped random weights, f16 diffusers folder in /tmp/lcm-fullsize (reused when
#                    the check's call made it on this still-warm machine)
#   lcm_*            `lcm bench --device cuda --json --model FOLDER` at 512x512 batch 1, the same with an
#                    unmerged rank-64 LoRA (--lora-rank 64), 768x768 batch 1 and 512x512 batch 4;
#                    4 steps, 3 warm-ups, median of 10
#   kernels          the kernel table (benches/kernels.rs, LCM_BENCH_QUICK=1): TFLOP/s or GB/s per kernel
#   torch_kernels    the same shapes through cuDNN / cuBLAS / SDPA (scripts/torch_kernel_reference.py)
#   vs_torch         scripts/bench_gpu_vs_torch.py: diffusers f16 + SDPA eager at the three sizes, and
#                    torch.compile at 512x512 batch 1 with what the deadline leaves (at most 180 s; skipped
#                    with a note below 60 s); the table of each stage for lcm and each peer, with ratios
# $OUT gets machine.txt, summary.txt and logs.tgz as they happen (see scripts/device-lib.sh), and at the
# end vs_torch.txt, bench_vs_torch.json, lcm_bench.jsonl, kernels.txt and torch_kernels.txt.
#
# LCM_DRY_RUN=1 (no GPU), after a dry scripts/device-check.sh run: `build` stages the test-profile `lcm`
# that `scripts/test.sh` built (cargo test builds no benches, so the kernels step reports SKIPPED). Where
# python3 has torch and diffusers: tiny models, lcm and eager on the CPU, to check the wiring of the
# comparison; else `lcm bench --device emulated` once at 64x64 on tests/fixtures/tiny-sd and the PyTorch
# steps SKIPPED.
#   CI:  LCM_DRY_RUN=1 scripts/device-bench.sh build && LCM_DRY_RUN=1 scripts/device-bench.sh run
#
# The device call (docs/kernels.md, docs/BENCH_LOG.md), on the machine the check just passed on:
#   run(command="LCM_DEADLINE_S=<budget_left_s - 60> bash scripts/device-bench.sh run", carry=[".device", ".whl"],
#       timeout_s=<LCM_DEADLINE_S + 45, at most 600>)
set -uo pipefail
cd "$(dirname "$0")/.."
source scripts/device-lib.sh

build() {
    set -e
    if dry; then
        # The `lcm` binary as scripts/test.sh built it for crates/lcm-cli's tests (test profile; unfiltered,
        # so nothing is compiled again).
        stage_bundle bench lcm test --no-run
        echo "staged. Dry run: LCM_DRY_RUN=1 $0 run"
    else
        stage_bundle bench "lcm kernels" build --release --bin lcm --bench kernels
        fetch_wheels
        du -ch .device/*.tar.xz .whl/*.whl | tail -1
        echo "staged. Device call: bash scripts/device-bench.sh run   (carry .device and .whl, timeout_s 390)"
    fi
}

# Refuses to bench (exit 3) unless the device check passed on this machine, or LCM_BENCH_ANYWAY=1.
require_check() {
    local f=/tmp/lcm-device-check$DRY_SUFFIX.verdict v
    v=$(cat "$f" 2>/dev/null)
    echo "device check verdict: ${v:-none on this machine}"
    [[ $v == PASS* ]] && return 0
    if [ "${LCM_BENCH_ANYWAY:-0}" = 1 ]; then
        echo "LCM_BENCH_ANYWAY=1: benchmarking without a passed check"
        return 0
    fi
    local why="REFUSED: no passed device check on this machine (${v:-no $f}); run scripts/device-check.sh first, or set LCM_BENCH_ANYWAY=1"
    echo "$why" | tee "$FINAL/summary.txt"
    exit 3
}

# Flags of every `lcm bench` run: 4 steps, 3 warm-ups, median of 10 (one emulated generation when dry).
TIMING=(--steps 4 --warmup 3 --repeat 10)

# lcm_bench DEVICE WxHxB [FLAGS...]: one `lcm bench` run, its JSON line to $OUTDIR/lcm_<tag>.json.
lcm_bench() {
    local dev=$1 cfg=$2 w h b
    shift 2
    IFS=x read -r w h b <<<"$cfg"
    local tag=$cfg${1:+_lora$2}
    step "lcm_$tag" 60 bash -c 'out=$1; shift; "$@" >"$out"' _ "$OUTDIR/lcm_$tag.json" "$B/lcm" bench \
        --device "$dev" --json --model "$FULL" --width "$w" --height "$h" --num-images "$b" "${TIMING[@]}" "$@"
    grep -h "repeat" "$OUTDIR/lcm_$tag.log" | tail -n 1
}

run() {
    begin bench "${LCM_DEADLINE_S:-330}" "device bench"
    require_check
    RESULTS=("$OUTDIR/vs_torch.txt" "$OUTDIR/bench_vs_torch.json" "$OUTDIR/lcm_bench.jsonl" "$OUTDIR/kernels.txt"
        "$OUTDIR/torch_kernels.txt")
    install_wheels || exit 1
    FULL=/tmp/lcm-fullsize
    local dev=cuda configs=(512x512x1 768x768x1 512x512x4) make=() peer=() torch=1
    if dry && have_python torch diffusers; then
        # No GPU: tiny models, lcm and eager on the CPU, to check this script's wiring here.
        dev=cpu configs=(128x128x1 128x128x2) make=(--device cpu --tiny) FULL=/tmp/lcm-fullsize-tiny
        peer=(--device cpu --no-compile --warmup 1 --repeat 2)
    elif dry; then
        # No GPU and no PyTorch: the emulated CUDA backend on the tiny fixture, one generation.
        dev=emulated configs=(64x64x1) FULL=$PWD/tests/fixtures/tiny-sd torch=0
        TIMING=(--steps 1 --warmup 0 --repeat 1)
    fi
    if [ $torch = 1 ]; then
        step torch_fullsize 120 python3 scripts/torch_fullsize.py --out "$FULL" --no-reference "${make[@]}"
    fi

    for c in "${configs[@]}"; do lcm_bench $dev "$c"; done
    [ $dev = cuda ] && lcm_bench cuda 512x512x1 --lora-rank 64
    cat "$OUTDIR"/lcm_*.json >"$OUTDIR/lcm_bench.jsonl" 2>/dev/null

    if [ -x "$B/kernels" ]; then
        step kernels 50 env LCM_BENCH_QUICK=1 "$B/kernels"
    else
        record kernels SKIPPED 0 "not in a dry bundle (cargo test builds no benches)"
    fi
    if [ $torch = 0 ]; then
        echo "=== torch_kernels, vs_torch: SKIPPED (dry run: python3 lacks torch or diffusers)"
        record torch_kernels SKIPPED 0 "python3 lacks torch or diffusers"
        record vs_torch SKIPPED 0 "python3 lacks torch or diffusers"
        finish
        return
    fi
    step torch_kernels 40 python3 scripts/torch_kernel_reference.py

    # The comparison: eager needs about a minute at the three sizes; compile gets the rest, capped.
    local cap=$(($(left) - 75))
    [ $cap -gt 180 ] && cap=180
    local compile=(--compile-timeout "$cap")
    [ $cap -lt 60 ] && compile=(--no-compile)
    local list
    list=$(IFS=,; echo "${configs[*]}")
    step vs_torch 400 python3 scripts/bench_gpu_vs_torch.py --model "$FULL" --lcm-json "$OUTDIR"/lcm_*.json \
        --configs "$list" --compile-configs "${configs[0]}" "${compile[@]}" "${peer[@]}" \
        --out "$OUTDIR/bench_vs_torch.json"

    grep -v "^===" "$OUTDIR/kernels.log" 2>/dev/null | tail -n 40 | tee "$OUTDIR/kernels.txt"
    tee "$OUTDIR/torch_kernels.txt" <"$OUTDIR/torch_kernels.log"
    echo
    tee "$OUTDIR/vs_torch.txt" <"$OUTDIR/bench_vs_torch.txt" 2>/dev/null
    finish
}

case "${1:-}" in
    build) build ;;
    run) run ;;
    *) echo "usage: $0 build|run" >&2; exit 2 ;;
esac
