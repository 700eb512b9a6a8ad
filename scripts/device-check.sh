#!/usr/bin/env bash
# The GPU correctness check of the CUDA kernels, the backend and the models (issue 4), in two halves:
#
#   scripts/device-check.sh build   here (no GPU needed): release build with nvcc (LCM_REQUIRE_CUDA=1) of
#                                   the GPU test executables, staged in .device/check.tar.xz, and the
#                                   diffusers wheel in .whl/ (both git-ignored)
#   scripts/device-check.sh run     there, from the repo root, with .device and .whl carried
#
# What `run` does, in this order (each step has its own time limit, all under one deadline, default
# 330 s or $LCM_DEADLINE_S, so the summary table always prints, last):
#   torch_fullsize   background from the start: scripts/torch_fullsize.py makes SD1.5-shaped random
#                    weights on the GPU (f16 folder in /tmp/lcm-fullsize) and PyTorch's f32 outputs
#   gpu_models       blocks vs CPU; no allocation on the second run; graph replay = plain launches
#   gpu_pipeline     tiny fixtures vs CPU: CLIP, UNet a/b/c, LCM UNet + timestep_cond, VAE both ways,
#                    4 pipeline cases (plain, CFG x2, LCM x2, LoRA)
#   gpu_fullsize     the full-size UNet (batch 1 and CFG batch 2), VAE decode and CLIP vs PyTorch
#   gpu_kernels      every kernel at every SD1.5 shape and awkward ones vs CPU
#   memcheck_*       compute-sanitizer memcheck on reduced runs (kernels with plain launches so an error
#                    names its kernel; models and the tiny pipeline with CUDA graphs)
#   racecheck        on the shared-memory kernels (conv/linear, attention, GroupNorm), tiny cases
# $OUT gets summary.txt, fullsize.txt (the full-size numbers) and logs.tgz (every log).
#
# LCM_STEPS="name ..." runs only the named steps (a later call for what an earlier one had no time for).
# LCM_DRY_RUN=1 (no GPU, python3 with torch + diffusers): the full-size step runs on tiny models and
# the CPU backend, to check this script's wiring; everything else reports SKIPPED or fails.
#
# The device call (docs/kernels.md, docs/BENCH_LOG.md):
#   run(command="bash scripts/device-check.sh run", carry=[".device", ".whl"], timeout_s=390)
set -uo pipefail
cd "$(dirname "$0")/.."
source scripts/device-lib.sh

build() {
    set -e
    stage_bundle check --test gpu_kernels --test gpu_models --test gpu_pipeline --test gpu_fullsize
    fetch_wheels
    du -ch .device/*.tar.xz .whl/*.whl | tail -1
    echo "staged. Device call: bash scripts/device-check.sh run   (carry .device and .whl, timeout_s 390)"
}

run() {
    begin check "${LCM_DEADLINE_S:-330}"
    install_wheels || exit 1
    local full=/tmp/lcm-fullsize make=() backend=cuda
    if [ "${LCM_DRY_RUN:-0}" = 1 ]; then
        full=/tmp/lcm-fullsize-tiny make=(--device cpu --tiny) backend=cpu
    fi
    wanted gpu_fullsize && bg_start torch_fullsize 150 python3 scripts/torch_fullsize.py --out "$full" "${make[@]}"

    step gpu_models 40 "$B/gpu_models"
    step gpu_pipeline 60 "$B/gpu_pipeline"
    if ! wanted gpu_fullsize; then
        :
    elif bg_wait torch_fullsize; then
        step gpu_fullsize 60 env LCM_FULLSIZE_DIR="$full" LCM_FULLSIZE_BACKEND=$backend "$B/gpu_fullsize"
    else
        record gpu_fullsize NOT_RUN 0
    fi
    step gpu_kernels 150 "$B/gpu_kernels"

    local san="compute-sanitizer --error-exitcode 9 --print-limit 20"
    step memcheck_kernels 80 env LCM_GPU_TESTS_REDUCED=1 LCM_CUDA_GRAPHS=0 $san --tool memcheck "$B/gpu_kernels"
    step memcheck_models 40 env LCM_GPU_TESTS_REDUCED=1 $san --tool memcheck "$B/gpu_models"
    step memcheck_pipeline 50 env LCM_GPU_TESTS_REDUCED=1 $san --tool memcheck "$B/gpu_pipeline"
    step racecheck 50 env LCM_GPU_TESTS_REDUCED=2 LCM_CUDA_GRAPHS=0 $san --tool racecheck "$B/gpu_kernels" \
        conv2d attention group_norm_matches linear

    {
        echo "kernels with spills (sm_90a; store and load bytes):"
        awk -F'\t' '$1=="sm_90a" && ($6>0 || $7>0) {print "  " $2, $6, $7}' "$B/ptxas_report.tsv"
        echo "full size vs PyTorch (limit 2e-2):"
        grep -hE "rel L2|loaded" "$OUTDIR/gpu_fullsize.log" 2>/dev/null | sed 's/^/  /'
    } | tee "$OUTDIR/fullsize.txt"
    finish "device check" "$OUTDIR/fullsize.txt"
}

case "${1:-}" in
    build) build ;;
    run) run ;;
    *) echo "usage: $0 build|run" >&2; exit 2 ;;
esac
