# Shared by scripts/device-check.sh and scripts/device-bench.sh (sourced, not run): staging executables
# here, and running timed steps there under one deadline so the summary always prints.
#
# Here:  stage_bundle NAME CARGO_FLAGS...   release-build the named targets with nvcc, copy their
#                                          executables (and the ptxas report) to .device/NAME.tar.xz
#        fetch_wheels                      the diffusers wheel into .whl/ (the GPU machine has torch and
#                                          transformers but not diffusers, and no network)
# There: begin NAME DEADLINE_S; step NAME LIMIT_S CMD...; bg_start/bg_wait; finish
#
# Why xz with a large dictionary: every executable embeds the same 9 MB fatbin; a dictionary larger
# than one executable lets the archive store it once.

DIFFUSERS_WHEEL=diffusers==0.42.1

stage_bundle() {
    local name=$1
    shift
    local T=${CARGO_TARGET_DIR:-target}
    local dir=.device/$name
    rm -rf "$dir" && mkdir -p "$dir/bin"
    LCM_REQUIRE_CUDA=1 cargo build --release --locked --message-format=json "$@" >"$dir/cargo.json"
    # cargo names each built executable in its JSON messages; copy them under their target names.
    python3 - "$dir" <<'EOF'
import json, shutil, sys
d = sys.argv[1]
for line in open(f"{d}/cargo.json"):
    try:
        m = json.loads(line)
    except ValueError:
        continue
    if m.get("reason") == "compiler-artifact" and m.get("executable"):
        shutil.copy(m["executable"], f"{d}/bin/{m['target']['name']}")
        print(f"staged {m['target']['name']} <- {m['executable']}")
EOF
    rm "$dir/cargo.json"
    cp "$(ls -td "$T"/release/build/lcm-*/out | head -1)/ptxas_report.tsv" "$dir/bin/"
    for f in "$dir"/bin/*; do strip --strip-debug "$f" 2>/dev/null || true; done
    tar -C "$dir" -cf - bin | xz -T2 --lzma2=preset=6,dict=192MiB >".device/$name.tar.xz"
    rm -rf "$dir"
    du -h ".device/$name.tar.xz"
}

fetch_wheels() {
    mkdir -p .whl
    ls .whl/diffusers-*.whl >/dev/null 2>&1 && return 0
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 -d .whl "$DIFFUSERS_WHEEL"
}

# --- on the GPU machine -------------------------------------------------------------------------------

STEPS=()

# begin NAME DEADLINE_S: unpacks .device/NAME.tar.xz into $B, logs into $OUTDIR, results to $FINAL.
begin() {
    FINAL=${OUT:-.device/out}
    WORK=/tmp/lcm-device-$1
    OUTDIR=$WORK/logs
    B=$WORK/bin
    DEADLINE=$2
    rm -rf "$WORK" && mkdir -p "$OUTDIR" "$FINAL"
    # Python's tarfile reads xz without the xz tool.
    python3 -c "import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2], filter='tar')" \
        ".device/$1.tar.xz" "$WORK" || { echo "cannot unpack .device/$1.tar.xz (run: $0 build)"; exit 1; }
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader | tee "$OUTDIR/gpu.txt"
    export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1 PYTHONUNBUFFERED=1
}

# The carried diffusers wheel, installed beside the machine's own packages.
install_wheels() {
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        .whl/*.whl >"$OUTDIR/pip.log" 2>&1 || { cat "$OUTDIR/pip.log"; return 1; }
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
}

# $LCM_STEPS (names separated by spaces) runs only those steps, e.g. the sanitizers a first call had no
# time for: LCM_STEPS="memcheck_kernels racecheck" bash scripts/device-check.sh run
wanted() { [ -z "${LCM_STEPS:-}" ] || [[ " $LCM_STEPS " == *" $1 "* ]]; }

# Seconds left before the deadline, keeping 15 for the summary.
left() { echo $((DEADLINE - SECONDS - 15)); }

record() { # record NAME VERDICT SECONDS
    STEPS+=("$(printf '%-26s %-10s %5ss' "$1" "$2" "$3")")
}

verdict() { # verdict RC LOG
    local rc=$1 v=PASS
    { [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; } && v=TIMEOUT
    [ "$rc" -ne 0 ] && [ "$v" = PASS ] && v="FAIL($rc)"
    # A GPU test that found no GPU would pass vacuously: here that is a failure of the check.
    grep -q "^SKIPPED" "$2" && [ "$v" = PASS ] && v=SKIPPED
    # ... and so is a name filter that matched no test.
    grep -q "^test result: ok\. 0 passed" "$2" && [ "$v" = PASS ] && v=EMPTY
    echo "$v"
}

# step NAME LIMIT CMD...: runs CMD with a time limit (cut to what the deadline leaves), logs it to
# $OUTDIR/NAME.log, prints the lines that matter, records the verdict.
step() {
    local name=$1 limit=$2
    shift 2
    wanted "$name" || return 0
    local l t0=$SECONDS log="$OUTDIR/$name.log"
    l=$(left)
    [ "$l" -lt "$limit" ] && limit=$l
    if [ "$limit" -lt 5 ]; then
        echo "=== $name: no time left"
        record "$name" NO_TIME 0
        return
    fi
    echo "=== $name (limit ${limit}s): $*"
    timeout --kill-after=10 "$limit" "$@" >"$log" 2>&1
    local rc=$? v
    v=$(verdict $rc "$log")
    grep -E "^test .* (FAILED|ok)$|test result|SKIPPED|ERROR SUMMARY|panicked|rel L2|Error|error" "$log" | tail -n 12
    record "$name" "$v" $((SECONDS - t0))
}

# bg_start NAME LIMIT CMD...: the same, in the background (collect with bg_wait NAME).
declare -A BG_PID BG_T0
bg_start() {
    local name=$1 limit=$2
    shift 2
    BG_T0[$name]=$SECONDS
    echo "=== $name (background, limit ${limit}s): $*"
    (
        timeout --kill-after=10 "$limit" "$@" >"$OUTDIR/$name.log" 2>&1
        echo $? >"$OUTDIR/$name.rc"
    ) &
    BG_PID[$name]=$!
}

bg_wait() {
    local name=$1
    wait "${BG_PID[$name]}"
    local v
    v=$(verdict "$(cat "$OUTDIR/$name.rc" 2>/dev/null || echo 1)" "$OUTDIR/$name.log")
    tail -n 6 "$OUTDIR/$name.log"
    record "$name" "$v" $((SECONDS - BG_T0[$name]))
    [ "$v" = PASS ]
}

# finish TITLE FILES...: the summary table last, logs archived, FILES copied to $FINAL; exit status 1
# unless every step passed.
finish() {
    local title=$1
    shift
    {
        echo
        echo "=== $title: $(head -1 "$OUTDIR/gpu.txt"), ${SECONDS}s of ${DEADLINE}s"
        printf '%s\n' "${STEPS[@]}"
    } | tee "$OUTDIR/summary.txt"
    tar -C "$WORK" -czf "$FINAL/logs.tgz" logs
    cp "$OUTDIR/summary.txt" "$FINAL/"
    for f in "$@"; do [ -f "$f" ] && cp "$f" "$FINAL/"; done
    for s in "${STEPS[@]}"; do [[ $s == *" PASS "* ]] || exit 1; done
}
