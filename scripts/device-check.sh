#!/usr/bin/env bash
# The one GPU check of the CUDA kernels and backend, in two halves:
#
#   scripts/device-check.sh build   here (no GPU needed): release build with nvcc (LCM_REQUIRE_CUDA=1),
#                                   the GPU test executables and the kernel bench, staged in .device/
#                                   (git-ignored), stripped of host debug info to travel light.
#   scripts/device-check.sh run     there, from the repo root, with .device carried: every GPU test,
#                                   compute-sanitizer memcheck (and racecheck on the shared-memory
#                                   kernels) on a reduced run, the kernel bench table, the same shapes
#                                   through PyTorch for reference, then a short summary table, last.
#
# The device call (docs/kernels.md): run(command="bash scripts/device-check.sh run",
# carry=[".device"], timeout_s=480). Each step has its own time limit so the whole stays under
# 8 minutes; logs go to $OUT (or .device/out when $OUT is unset).
set -uo pipefail
cd "$(dirname "$0")/.."

stage() {
    set -e
    export LCM_REQUIRE_CUDA=1
    cargo build --release
    rm -rf .device && mkdir -p .device/bin
    # Test and bench executables: cargo prints their paths in its JSON messages.
    cargo test --release --no-run --message-format=json --test gpu_kernels --test gpu_models >.device/cargo.json
    cargo bench --no-run --message-format=json --bench kernels >>.device/cargo.json
    python3 - .device/cargo.json <<'EOF'
import json, shutil, sys
for line in open(sys.argv[1]):
    try:
        m = json.loads(line)
    except ValueError:
        continue
    exe = m.get("executable")
    if m.get("reason") == "compiler-artifact" and exe:
        name = m["target"]["name"]
        shutil.copy(exe, f".device/bin/{name}")
        print(f"staged {name} <- {exe}")
EOF
    rm .device/cargo.json
    [ -x target/release/lcm ] && cp target/release/lcm .device/bin/
    for f in .device/bin/*; do strip --strip-debug "$f" 2>/dev/null || true; done
    cp "$(ls -td target/release/build/lcm-*/out | head -1)/ptxas_report.tsv" .device/bin/
    for t in gpu_kernels gpu_models kernels; do
        [ -x ".device/bin/$t" ] || { echo "missing .device/bin/$t" >&2; exit 1; }
    done
    # Every executable embeds the 9 MB fatbin: compressed, the bundle is a fraction of the 64 MiB that
    # may travel.
    tar -C .device -czf .device/bundle.tgz bin && rm -rf .device/bin
    du -sh .device/bundle.tgz
    echo "staged. Device call: bash scripts/device-check.sh run   (carry .device, timeout_s 480)"
}

# step NAME LIMIT_S COMMAND...: runs one step with a time limit, logs it, records pass/fail and time.
STEPS=()
step() {
    local name=$1 limit=$2
    shift 2
    local t0=$SECONDS log="$OUTDIR/$name.log"
    echo "=== $name (limit ${limit}s): $*"
    timeout --kill-after=10 "$limit" "$@" >"$log" 2>&1
    local rc=$?
    local verdict=PASS
    [ $rc -eq 124 ] || [ $rc -eq 137 ] && verdict="TIMEOUT"
    [ $rc -ne 0 ] && [ "$verdict" = PASS ] && verdict="FAIL($rc)"
    # A GPU test that found no GPU passes vacuously: here that is a failure of the check.
    grep -q "^SKIPPED" "$log" && [ "$verdict" = PASS ] && verdict="SKIPPED"
    grep -E "^test .* (FAILED|ok)$|test result|SKIPPED|ERROR SUMMARY|panicked" "$log" | tail -n 12
    STEPS+=("$(printf '%-34s %-10s %5ss' "$name" "$verdict" $((SECONDS - t0)))")
}

run() {
    # Logs gather in /tmp and come back as one archive plus the three short files (at most 8 files
    # return from a device call).
    FINAL=${OUT:-.device/out}
    OUTDIR=/tmp/lcm-device/logs
    rm -rf /tmp/lcm-device && mkdir -p "$OUTDIR" "$FINAL" && tar -C /tmp/lcm-device -xzf .device/bundle.tgz || exit 1
    B=/tmp/lcm-device/bin
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm --format=csv,noheader | tee "$OUTDIR/gpu.txt"
    cp $B/ptxas_report.tsv "$OUTDIR/"

    # 1. Every GPU test, full size (CPU reference on 16 cores dominates the time).
    step gpu_kernels 200 $B/gpu_kernels --test-threads 2 --nocapture
    step gpu_models 60 $B/gpu_models --nocapture
    # 2. Sanitizers on the reduced cases: memcheck over everything (plain launches, so an error names
    #    its kernel; the models test keeps CUDA graphs on), racecheck on the shared-memory kernels.
    SAN="compute-sanitizer --error-exitcode 9 --print-limit 20"
    LCM_GPU_TESTS_REDUCED=1 LCM_CUDA_GRAPHS=0 step memcheck_kernels 110 $SAN --tool memcheck $B/gpu_kernels --test-threads 1
    LCM_GPU_TESTS_REDUCED=1 step memcheck_models 40 $SAN --tool memcheck $B/gpu_models --test-threads 1
    LCM_GPU_TESTS_REDUCED=2 LCM_CUDA_GRAPHS=0 step racecheck 70 $SAN --tool racecheck $B/gpu_kernels --test-threads 1 \
        conv2d attention group_norm_matches linear
    # 3. Kernel timings, then the same shapes through PyTorch (cuDNN / cuBLAS / SDPA) for reference.
    LCM_BENCH_QUICK=1 step bench 50 $B/kernels
    step torch_reference 45 python3 - <<'EOF'
import torch, torch.nn.functional as F
torch.backends.cudnn.benchmark = True
def t(f, reps=20):
    for _ in range(3): f()
    torch.cuda.synchronize(); s = torch.cuda.Event(enable_timing=True); e = torch.cuda.Event(enable_timing=True)
    s.record()
    for _ in range(reps): f()
    e.record(); torch.cuda.synchronize(); return s.elapsed_time(e) / reps * 1e3
h16 = dict(device="cuda", dtype=torch.float16)
print(f"{'torch reference':<44} {'time (us)':>10} {'TFLOP/s':>10}")
for h, ci, co, k in [(64,320,320,3),(32,640,640,3),(16,1280,1280,3),(128,512,512,3),(256,256,256,3),(512,128,128,3)]:
    x = torch.randn(1, ci, h, h, **h16).to(memory_format=torch.channels_last)
    w = torch.randn(co, ci, k, k, **h16).to(memory_format=torch.channels_last); b = torch.randn(co, **h16)
    us = t(lambda: F.conv2d(x, w, b, padding=k // 2))
    print(f"{f'conv {h}x{h} {ci}->{co} k{k}':<44} {us:>10.1f} {2*h*h*ci*co*k*k/us/1e6:>10.1f}")
for m, kk, n in [(4096,320,320),(4096,320,2560),(4096,1280,320),(77,768,768)]:
    x = torch.randn(m, kk, **h16); w = torch.randn(n, kk, **h16); b = torch.randn(n, **h16)
    us = t(lambda: F.linear(x, w, b))
    print(f"{f'linear {m}x{kk}->{n}':<44} {us:>10.1f} {2*m*kk*n/us/1e6:>10.1f}")
for nq, nkv, hd, d, causal in [(4096,4096,8,40,False),(4096,77,8,40,False),(1024,1024,8,80,False),(256,256,8,160,False),(77,77,12,64,True),(4096,4096,1,512,False)]:
    q = torch.randn(1, hd, nq, d, **h16); k = torch.randn(1, hd, nkv, d, **h16); v = torch.randn(1, hd, nkv, d, **h16)
    us = t(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=causal))
    print(f"{f'sdpa nq{nq} nkv{nkv} {hd}x{d}':<44} {us:>10.1f} {4*nq*nkv*hd*d*(0.5 if causal else 1)/us/1e6:>10.1f}")
for h, c in [(64,320),(512,128)]:
    x = torch.randn(1, c, h, h, **h16).to(memory_format=torch.channels_last); g = torch.nn.GroupNorm(32, c).half().cuda()
    us = t(lambda: F.silu(g(x)))
    print(f"{f'group_norm+silu {h}x{h} C{c}':<44} {us:>10.1f} {'-':>10}")
EOF
    grep -v "^===" "$OUTDIR/bench.log" | tail -n 40
    cat "$OUTDIR/torch_reference.log"

    {
        echo
        echo "kernels with spills (sm_90a; store and load bytes):"
        awk -F'\t' '$1=="sm_90a" && ($6>0 || $7>0) {print "  " $2, $6, $7}' $B/ptxas_report.tsv
        echo "=== summary ($(head -1 "$OUTDIR/gpu.txt" | cut -d, -f1))"
        printf '%s\n' "${STEPS[@]}"
    } | tee "$OUTDIR/summary.txt"
    tar -C /tmp/lcm-device -czf "$FINAL/logs.tgz" logs
    cp "$OUTDIR/summary.txt" "$OUTDIR/bench.log" "$OUTDIR/torch_reference.log" "$FINAL/"
    for s in "${STEPS[@]}"; do [[ $s == *" PASS "* ]] || exit 1; done
}

case "${1:-}" in
    build) stage ;;
    run) run ;;
    *) echo "usage: $0 build|run" >&2; exit 2 ;;
esac
