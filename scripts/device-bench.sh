#!/usr/bin/env bash
# The GPU benchmark (issue 5): lcm against diffusers on PyTorch on the same weights and card, in one call.
#
#   scripts/device-bench.sh build   here: release build with nvcc of `lcm` and the kernel bench, staged in
#                                   .device/bench.tar.xz; the diffusers wheel in .whl/
#   scripts/device-bench.sh run     there, from the repo root, with .device and .whl carried
#
# What `run` does (one deadline, default 330 s or $LCM_DEADLINE_S; the tables and the summary last):
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
# LCM_DRY_RUN=1 (no GPU, python3 with torch + diffusers): tiny models, lcm and eager on the CPU, to check
# this script's wiring here; the kernel steps report SKIPPED or fail.
# $OUT gets summary.txt, vs_torch.txt, bench_vs_torch.json, lcm_bench.jsonl, kernels.txt,
# torch_kernels.txt and logs.tgz.
#
# The device call (docs/kernels.md, docs/BENCH_LOG.md):
#   run(command="bash scripts/device-bench.sh run", carry=[".device", ".whl"], timeout_s=390)
set -uo pipefail
cd "$(dirname "$0")/.."
source scripts/device-lib.sh

build() {
    set -e
    stage_bundle bench --bin lcm --bench kernels
    fetch_wheels
    du -ch .device/*.tar.xz .whl/*.whl | tail -1
    echo "staged. Device call: bash scripts/device-bench.sh run   (carry .device and .whl, timeout_s 390)"
}

# lcm_bench DEVICE WxHxB [FLAGS...]: one `lcm bench` run, its JSON line to $OUTDIR/lcm_<tag>.json.
lcm_bench() {
    local dev=$1 cfg=$2 w h b
    shift 2
    IFS=x read -r w h b <<<"$cfg"
    local tag=$cfg${1:+_lora$2}
    step "lcm_$tag" 60 bash -c 'out=$1; shift; "$@" >"$out"' _ "$OUTDIR/lcm_$tag.json" "$B/lcm" bench \
        --device "$dev" --json --model "$FULL" --width "$w" --height "$h" --num-images "$b" --steps 4 \
        --warmup 3 --repeat 10 "$@"
    grep -h "repeat 10/10" "$OUTDIR/lcm_$tag.log"
}

run() {
    begin bench "${LCM_DEADLINE_S:-330}"
    install_wheels || exit 1
    FULL=/tmp/lcm-fullsize
    local dev=cuda configs=(512x512x1 768x768x1 512x512x4) make=() peer=()
    if [ "${LCM_DRY_RUN:-0}" = 1 ]; then
        # No GPU: tiny models on the CPU, to check this script's wiring here.
        dev=cpu configs=(128x128x1 128x128x2) make=(--device cpu --tiny) FULL=/tmp/lcm-fullsize-tiny
        peer=(--device cpu --no-compile --warmup 1 --repeat 2)
    fi
    step torch_fullsize 120 python3 scripts/torch_fullsize.py --out "$FULL" --no-reference "${make[@]}"

    for c in "${configs[@]}"; do lcm_bench $dev "$c"; done
    [ $dev = cuda ] && lcm_bench cuda 512x512x1 --lora-rank 64
    cat "$OUTDIR"/lcm_*.json >"$OUTDIR/lcm_bench.jsonl" 2>/dev/null

    step kernels 50 env LCM_BENCH_QUICK=1 "$B/kernels"
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

    grep -v "^===" "$OUTDIR/kernels.log" | tail -n 40 | tee "$OUTDIR/kernels.txt"
    tee "$OUTDIR/torch_kernels.txt" <"$OUTDIR/torch_kernels.log"
    echo
    tee "$OUTDIR/vs_torch.txt" <"$OUTDIR/bench_vs_torch.txt" 2>/dev/null
    finish "device bench" "$OUTDIR/vs_torch.txt" "$OUTDIR/bench_vs_torch.json" "$OUTDIR/lcm_bench.jsonl" \
        "$OUTDIR/kernels.txt" "$OUTDIR/torch_kernels.txt"
}

case "${1:-}" in
    build) build ;;
    run) run ;;
    *) echo "usage: $0 build|run" >&2; exit 2 ;;
esac
