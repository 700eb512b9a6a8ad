#!/usr/bin/env bash
# The GPU correctness check of the CUDA kernels, the backend and the models (issues 4 and 9), in two halves:
#
#   scripts/device-check.sh build   here (no GPU needed): release build with nvcc (LCM_REQUIRE_CUDA=1) of
#                                   the GPU test executables, staged in .device/check.tar.xz (stamped with
#                                   `git describe --always --dirty`), and the diffusers wheel in .whl/
#                                   (both git-ignored)
#   scripts/device-check.sh run     there, from the repo root, with .device and .whl carried
#
# What `run` does, in this order (each step has its own time limit, all under one deadline, default
# 330 s or $LCM_DEADLINE_S, so the summary table always prints, last):
#   (begin)          the bundle's stamp, nvidia-smi, the sandbox runtime (gVisor or Firecracker), libcuda
#   smoke            gpu_kernels smoke_every_family: one small launch of every kernel family vs the CPU,
#                    so a broken build or driver shows in seconds
#   torch_fullsize   background from here on: scripts/torch_fullsize.py makes SD1.5-shaped random weights
#                    on the GPU (f16 folder in /tmp/lcm-fullsize) and PyTorch's f32 outputs
#   gpu_kernels      every kernel at every SD1.5 shape and awkward ones vs CPU
#   backend_ops      every op (each fused form and element-wise function) at model and awkward shapes vs CPU
#   gpu_models       blocks vs CPU; no allocation on the second run; graph replay = plain launches
#   gpu_pipeline     tiny fixtures vs CPU: CLIP, UNet a/b/c, LCM UNet + timestep_cond, VAE both ways,
#                    4 pipeline cases (plain, CFG x2, LCM x2, LoRA)
#   gpu_controlnet   ControlNet calls (SD1.5, SDXL) and ControlNet pipelines inside the denoising graph
#                    vs CPU; a new conditioning scale re-records nothing
#   gpu_inpaint      inpainting pipelines (9-channel and blended 4-channel UNets, SDXL) vs CPU
#   gpu_samplers     TCD, Euler, Euler ancestral and DDIM pipelines (SD1.5, SDXL, SD2, SD-Turbo) vs CPU
#   gpu_prompts      A1111-syntax prompts (77·k keys, halves of different lengths) and embeddings vs CPU
#   gpu_fullsize     the full-size UNet (batch 1 and CFG batch 2), VAE decode and CLIP vs PyTorch
#   memcheck_*       compute-sanitizer memcheck on reduced runs, kernels first (plain launches so an error
#                    names its kernel; models and the tiny pipeline with CUDA graphs)
#   racecheck        on the shared-memory kernels (conv/linear, attention, GroupNorm), tiny cases
# A suite whose log shows a CUDA_ERROR_* reruns each test it struck alone, with LCM_CUDA_GRAPHS=0
# CUDA_LAUNCH_BLOCKING=1 (step SUITE.rerun.TEST), so the error names the kernel. compute-sanitizer is
# looked for on PATH and in /usr/local/cuda*/bin and probed first; where it is missing or cannot attach
# (gVisor) its steps report UNSUPPORTED, which does not fail the check.
# $OUT gets, as they happen: machine.txt, summary.txt (failure lines first, then the table so far) and
# logs.tgz after every step; at the end fullsize.txt (the full-size numbers and the kernels that spill).
# A full run leaves its verdict in /tmp/lcm-device-check.verdict: scripts/device-bench.sh runs only after
# a PASS there (same warm machine).
#
# LCM_STEPS="name ..." runs only the named steps (a later call for what an earlier one had no time for;
# it leaves the verdict file alone).
# LCM_DRY_RUN=1 (no GPU): `build` stages the test-profile executables `scripts/test.sh` built (no release
# build, no wheel download); `run` runs them on the kernel emulator. The full-size step runs on tiny models
# and the CPU backend where python3 has torch and diffusers, else it reports SKIPPED, as the sanitizer
# steps do. LCM_DRY_SIZE=smallest (what CI runs, well under two minutes) runs the suites reduced
# (LCM_GPU_TESTS_REDUCED=2).
#   CI:  LCM_DRY_RUN=1 scripts/device-check.sh build && LCM_DRY_RUN=1 LCM_DRY_SIZE=smallest scripts/device-check.sh run
#
# The device call (docs/kernels.md, docs/BENCH_LOG.md):
#   run(command="bash scripts/device-check.sh run", carry=[".device", ".whl"], timeout_s=390)
set -uo pipefail
cd "$(dirname "$0")/.."
source scripts/device-lib.sh

SUITES="gpu_kernels backend_ops gpu_models gpu_pipeline gpu_controlnet gpu_inpaint gpu_samplers gpu_prompts gpu_fullsize"

build() {
    set -e
    local tests=()
    for s in $SUITES; do tests+=(--test "$s"); done
    if dry; then
        # Every test target, as scripts/test.sh built them: a filtered build would unify dependency
        # features differently and compile them again.
        stage_bundle check "$SUITES" test --no-run
        echo "staged. Dry run: LCM_DRY_RUN=1 $0 run"
    else
        stage_bundle check "$SUITES" build --release "${tests[@]}"
        fetch_wheels
        du -ch .device/*.tar.xz .whl/*.whl | tail -1
        echo "staged. Device call: bash scripts/device-check.sh run   (carry .device and .whl, timeout_s 390)"
    fi
}

run() {
    begin check "${LCM_DEADLINE_S:-330}" "device check"
    RESULTS=("$OUTDIR/fullsize.txt")
    install_wheels || exit 1
    # LCM_GPU_TESTS_REDUCED=2 for the smallest dry run: the same tests and kernels, the cases racecheck
    # keeps (about 10 s on the emulator instead of two minutes).
    local reduced=()
    dry && [ "${LCM_DRY_SIZE:-}" = smallest ] && reduced=(LCM_GPU_TESTS_REDUCED=2)

    suite smoke 60 "$B/gpu_kernels" smoke_every_family

    local full=/tmp/lcm-fullsize make=() backend=cuda fullsize=1
    if dry; then
        full=/tmp/lcm-fullsize-tiny make=(--device cpu --tiny) backend=cpu
        have_python torch diffusers || fullsize=0
    fi
    if wanted gpu_fullsize && [ $fullsize = 1 ]; then
        bg_start torch_fullsize 150 python3 scripts/torch_fullsize.py --out "$full" "${make[@]}"
    fi

    suite gpu_kernels 150 "${reduced[@]}" "$B/gpu_kernels"
    suite backend_ops 40 "${reduced[@]}" "$B/backend_ops"
    suite gpu_models 40 "${reduced[@]}" "$B/gpu_models"
    suite gpu_pipeline 60 "${reduced[@]}" "$B/gpu_pipeline"
    suite gpu_controlnet 30 "${reduced[@]}" "$B/gpu_controlnet"
    suite gpu_inpaint 30 "${reduced[@]}" "$B/gpu_inpaint"
    suite gpu_samplers 30 "${reduced[@]}" "$B/gpu_samplers"
    suite gpu_prompts 30 "${reduced[@]}" "$B/gpu_prompts"
    if ! wanted gpu_fullsize; then
        :
    elif [ $fullsize = 0 ]; then
        echo "=== torch_fullsize, gpu_fullsize: SKIPPED (dry run: python3 lacks torch or diffusers)"
        record torch_fullsize SKIPPED 0 "python3 lacks torch or diffusers"
        record gpu_fullsize SKIPPED 0 "no full-size folder"
    elif bg_wait torch_fullsize; then
        suite gpu_fullsize 60 LCM_FULLSIZE_DIR="$full" LCM_FULLSIZE_BACKEND=$backend "$B/gpu_fullsize"
    else
        record gpu_fullsize NOT_RUN 0 "torch_fullsize failed"
    fi

    sanitizers

    {
        echo "kernels with spills (sm_90a; store and load bytes):"
        awk -F'\t' '$1=="sm_90a" && ($6>0 || $7>0) {print "  " $2, $6, $7}' "$B/ptxas_report.tsv" 2>/dev/null
        echo "full size vs PyTorch (limit 2e-2):"
        grep -hE "rel L2|loaded" "$OUTDIR/gpu_fullsize.log" 2>/dev/null | sed 's/^/  /'
    } | tee "$OUTDIR/fullsize.txt"
    finish
}

# The compute-sanitizer steps, kernels first; each reports UNSUPPORTED (not FAIL) where the tool is
# missing or cannot attach, and SKIPPED in a dry run (the emulator is no CUDA process to instrument).
sanitizers() {
    local steps=() n
    for n in memcheck_kernels memcheck_ops memcheck_models memcheck_pipeline racecheck; do wanted $n && steps+=("$n"); done
    [ ${#steps[@]} -gt 0 ] || return 0
    local san verdict="" why=""
    if dry; then
        verdict=SKIPPED why="dry run: kernels on the emulator"
    elif ! san=$(find_sanitizer); then
        verdict=UNSUPPORTED why="compute-sanitizer not on PATH nor in /usr/local/cuda*/bin"
    elif ! why=$(probe_sanitizer "$san"); then
        verdict=UNSUPPORTED
    fi
    if [ -n "$verdict" ]; then
        echo "=== ${steps[*]}: $verdict ($why)"
        for n in "${steps[@]}"; do record "$n" "$verdict" 0 "$why"; done
        return 0
    fi
    local cs=("$san" --error-exitcode 9 --print-limit 20)
    step memcheck_kernels 80 env LCM_GPU_TESTS_REDUCED=1 LCM_CUDA_GRAPHS=0 "${cs[@]}" --tool memcheck "$B/gpu_kernels"
    step memcheck_ops 30 env LCM_GPU_TESTS_REDUCED=1 LCM_CUDA_GRAPHS=0 "${cs[@]}" --tool memcheck "$B/backend_ops"
    step memcheck_models 40 env LCM_GPU_TESTS_REDUCED=1 "${cs[@]}" --tool memcheck "$B/gpu_models"
    step memcheck_pipeline 50 env LCM_GPU_TESTS_REDUCED=1 "${cs[@]}" --tool memcheck "$B/gpu_pipeline"
    step racecheck 50 env LCM_GPU_TESTS_REDUCED=2 LCM_CUDA_GRAPHS=0 "${cs[@]}" --tool racecheck "$B/gpu_kernels" \
        conv2d attention group_norm_matches linear
}

# compute-sanitizer on PATH, else the newest /usr/local/cuda*/bin one (the GPU images do not put it on PATH).
find_sanitizer() {
    command -v compute-sanitizer && return 0
    local s
    s=$(printf '%s\n' /usr/local/cuda*/bin/compute-sanitizer | sort -V | tail -n 1)
    [ -x "$s" ] && echo "$s"
}

# probe_sanitizer PATH: succeeds when compute-sanitizer answers --version within 2 s and can attach to a
# CUDA process (gpu_kernels opening the device and running no test); else prints why. Logged in
# sanitizer_probe.log.
probe_sanitizer() {
    local log=$OUTDIR/sanitizer_probe.log
    if ! timeout 2 "$1" --version >"$log" 2>&1; then
        echo "$1 --version failed or took over 2 s: $(tail -n 1 "$log")"
        return 1
    fi
    head -n 2 "$log" >&2
    if ! timeout --kill-after=5 30 "$1" --tool memcheck --error-exitcode 9 "$B/gpu_kernels" no_test_has_this_name \
        >>"$log" 2>&1; then
        echo "cannot attach: $(grep -m 1 -E '^========= (Error|Internal)' "$log" | sed 's/^========= //' \
            || tail -n 1 "$log")"
        return 1
    fi
}

case "${1:-}" in
    build) build ;;
    run) run ;;
    *) echo "usage: $0 build|run" >&2; exit 2 ;;
esac
