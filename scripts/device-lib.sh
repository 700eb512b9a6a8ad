# shellcheck shell=bash
# Shared by scripts/device-check.sh and scripts/device-bench.sh (sourced, not run): staging executables
# here, and running timed steps there under one deadline so the summary always prints.
#
# Here:  stage_bundle NAME "EXES" CARGO_ARGS...   build with `cargo CARGO_ARGS`, copy the named executables
#                                                (and the ptxas report, and a STAMP) into .device/NAME.tar.xz
#        fetch_wheels                            the diffusers wheel into .whl/ (the GPU machine has torch
#                                                and transformers but not diffusers, and no network)
# There: begin NAME DEADLINE_S TITLE; step / suite / bg_start / bg_wait; finish
#
# LCM_DRY_RUN=1 (no GPU): the bundle is the test-profile build `scripts/test.sh` already made (`cargo test
# --no-run` recompiles nothing), staged uncompressed as .device/NAME-dry.tar; the suites run on the kernel
# emulator (LCM_TEST_DEVICE=emulated); work and verdict files get a -dry suffix so a dry run on a machine
# never stands in for a real one.
#
# Why xz with a large dictionary: every executable embeds the same 9 MB fatbin; a dictionary larger
# than one executable lets the archive store it once. Not when dry: the bundle never leaves this machine,
# and compressing it would cost CI more time than anything else in the dry run.
#
# Results reach $OUT as they happen: after every step summary.txt (failures, then the table so far) is
# rewritten and logs.tgz re-archived, and a TERM/INT trap records the step it cut short, so a call the
# device tool kills at its timeout still returns what ran.

DIFFUSERS_WHEEL=diffusers==0.42.1
DRY=${LCM_DRY_RUN:-0}
[ "$DRY" = 1 ] && DRY_SUFFIX=-dry || DRY_SUFFIX=

dry() { [ "$DRY" = 1 ]; }

# Whether python3 can import every named module (without importing them: torch alone takes seconds).
have_python() {
    python3 -c 'import importlib.util as u, sys; sys.exit(any(u.find_spec(m) is None for m in sys.argv[1:]))' "$@"
}

stage_bundle() {
    local name=$1$DRY_SUFFIX exes=$2
    shift 2
    local dir=.device/$name
    rm -rf "$dir" && mkdir -p "$dir/bin"
    # LCM_REQUIRE_CUDA=1 as scripts/test.sh sets it: build.rs reruns when it changes. --workspace: the
    # packages' features unify as in scripts/test.sh's build (`lcm` is crates/lcm-cli's binary).
    local cmd=$1
    shift
    LCM_REQUIRE_CUDA=1 cargo "$cmd" --workspace "$@" --locked --message-format=json >"$dir/cargo.json"
    # cargo names each built executable in its JSON messages, and the out dir of lcm's build script (which
    # holds the ptxas report); copy the executables asked for under their target names.
    python3 - "$dir" "$exes" <<'EOF'
import json, os, re, shutil, sys
d, wanted = sys.argv[1], set(sys.argv[2].split())
out_dir = None
for line in open(f"{d}/cargo.json"):
    try:
        m = json.loads(line)
    except ValueError:
        continue
    if m.get("reason") == "build-script-executed" and re.search(r"/build/lcm-[0-9a-f]+/out$", m["out_dir"]):
        out_dir = m["out_dir"]
    # A binary's own unit-test harness carries the binary's name too, and so does the root package's
    # library harness (the package and the CLI binary are both `lcm`): take the binary itself.
    kinds = m.get("target", {}).get("kind", [])
    harness = ("bin" in kinds or "lib" in kinds) and m.get("profile", {}).get("test")
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] in wanted and not harness:
        shutil.copy(m["executable"], f"{d}/bin/{m['target']['name']}")
        wanted.discard(m["target"]["name"])
        print(f"staged {m['target']['name']} <- {m['executable']}")
if wanted:
    sys.exit(f"cargo built no executable for: {' '.join(sorted(wanted))}")
report = out_dir and os.path.join(out_dir, "ptxas_report.tsv")
if report and os.path.isfile(report):
    shutil.copy(report, f"{d}/bin/")
else:
    print("no ptxas_report.tsv (an emulator-only build?): the spill table will be empty")
EOF
    rm "$dir/cargo.json"
    # The bundle's identity, printed by `begin` there: which commit (and whether the tree had edits).
    printf '%s (%s, built %s)\n' "$(git describe --always --dirty 2>/dev/null || echo 'no git')" \
        "$(dry && echo 'test profile, dry run' || echo release)" "$(date -u +%FT%TZ)" >"$dir/bin/STAMP"
    for f in "$dir"/bin/*; do strip --strip-debug "$f" 2>/dev/null || true; done
    if dry; then
        tar -C "$dir" -cf ".device/$name.tar" bin
    else
        tar -C "$dir" -cf - bin | xz -T2 --lzma2=preset=6,dict=192MiB >".device/$name.tar.xz"
    fi
    echo "bundle: $(cat "$dir/bin/STAMP")"
    rm -rf "$dir"
    du -h .device/"$name".tar*
}

fetch_wheels() {
    mkdir -p .whl
    ls .whl/diffusers-*.whl >/dev/null 2>&1 && return 0
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 -d .whl "$DIFFUSERS_WHEEL"
}

# --- on the GPU machine -------------------------------------------------------------------------------

STEPS=()       # the summary table's rows
FAILED=()      # names of the steps whose log has failure lines (shown above the table)
RESULTS=()     # files the script copies to $FINAL at the end (set by the script)
CURRENT=       # the step running now, its timeout process and start: for the TERM trap
CURRENT_PID=
CURRENT_T0=0
declare -A BG_PID BG_T0

# begin NAME DEADLINE_S TITLE: unpacks the bundle into $B, logs into $OUTDIR, results to $FINAL; prints
# what the machine is; installs the TERM/INT trap.
begin() {
    FINAL=${OUT:-.device/out/$1$DRY_SUFFIX}
    WORK=/tmp/lcm-device-$1$DRY_SUFFIX
    VERDICT_FILE=$WORK.verdict
    OUTDIR=$WORK/logs
    B=$WORK/bin
    DEADLINE=$2
    TITLE=$3${DRY_SUFFIX:+ (dry run)}
    rm -rf "$WORK" && mkdir -p "$OUTDIR" "$FINAL"
    local bundle=.device/$1$DRY_SUFFIX.tar
    dry || bundle=$bundle.xz
    # Python's tarfile reads xz without the xz tool.
    python3 -c "import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2], filter='tar')" \
        "$bundle" "$WORK" || { echo "cannot unpack $bundle (run: ${DRY_SUFFIX:+LCM_DRY_RUN=1 }$0 build)"; exit 1; }
    STAMP=$(cat "$B/STAMP")
    trap 'interrupted TERM' TERM
    trap 'interrupted INT' INT
    machine | tee "$OUTDIR/machine.txt"
    cp "$OUTDIR/machine.txt" "$FINAL/"
    GPU=$(head -1 "$OUTDIR/gpu.txt")
    export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1 PYTHONUNBUFFERED=1
    # The suites' device: the GPU for real (a GPU that fails to open must fail the check, not fall back to
    # the emulator), the emulator when dry. Fixtures are read at run time from the carried tree.
    LCM_TEST_DEVICE=$(dry && echo emulated || echo gpu)
    export LCM_TEST_DEVICE LCM_FIXTURES=$PWD/tests/fixtures
}

# What the run depends on, first in the output: the bundle, the GPU and driver, the sandbox runtime
# (gVisor refuses compute-sanitizer; Firecracker is a full VM), libcuda.
machine() {
    echo "bundle: $STAMP"
    if command -v nvidia-smi >/dev/null; then
        timeout 20 nvidia-smi
        timeout 20 nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader \
            | tee "$OUTDIR/gpu.txt"
    else
        echo "nvidia-smi: absent$(dry && echo ' (dry run: kernels on the emulator)')" | tee "$OUTDIR/gpu.txt"
    fi
    local hints
    hints=$( { dmesg 2>/dev/null | head -n 20; cat /proc/version /proc/cmdline 2>/dev/null; } )
    echo "kernel: $(uname -a)"
    echo "/proc/version: $(cat /proc/version 2>/dev/null)"
    if grep -qi gvisor <<<"$hints"; then
        echo "runtime: gVisor (compute-sanitizer is expected to be UNSUPPORTED)"
    elif grep -qiE 'firecracker|virtio_mmio' <<<"$hints"; then
        echo "runtime: Firecracker"
    else
        echo "runtime: unknown (no gVisor or Firecracker hint in dmesg, /proc/version or /proc/cmdline)"
    fi
    echo "ldconfig -p | grep libcuda:"
    ldconfig -p 2>/dev/null | grep libcuda || echo "    (none: no libcuda in the linker cache)"
}

# The carried diffusers wheel, installed beside the machine's own packages (a dry run uses this
# machine's python as it is when no wheel was fetched).
install_wheels() {
    if ! ls .whl/*.whl >/dev/null 2>&1; then
        dry && return 0
        echo "no wheel in .whl/ (run: $0 build, and carry .whl)"
        return 1
    fi
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        .whl/*.whl >"$OUTDIR/pip.log" 2>&1 || { cat "$OUTDIR/pip.log"; return 1; }
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
}

# $LCM_STEPS (names separated by spaces) runs only those steps, e.g. the sanitizers a first call had no
# time for: LCM_STEPS="memcheck_kernels racecheck" bash scripts/device-check.sh run
wanted() { [ -z "${LCM_STEPS:-}" ] || [[ " $LCM_STEPS " == *" $1 "* ]]; }

# Seconds left before the deadline, keeping 15 for the summary.
left() { echo $((DEADLINE - SECONDS - 15)); }

# record NAME VERDICT SECONDS [NOTE]: a row of the table; the summary and logs in $FINAL brought up to date.
record() {
    STEPS+=("$(printf '%-40s %-13s %5ss  %s' "$1" "$2" "$3" "${4:-}")")
    if ! passing "$2" && [ -s "$OUTDIR/$1.failures" ]; then FAILED+=("$1"); fi
    summary "after $1" >"$FINAL/summary.txt"
    tar -C "$WORK" -czf "$FINAL/logs.tgz.part" logs && mv "$FINAL/logs.tgz.part" "$FINAL/logs.tgz"
}

# summary STATE: the failure lines of every failed step, then the table (last, as it prints at the end).
# Each failed test with its first failed case only, so that several failed steps still fit the 12 kB of
# output the device tool returns; every case is in the step's output above and in logs.tgz.
summary() {
    echo "=== $TITLE ($1): $GPU; bundle $STAMP; ${SECONDS}s of ${DEADLINE}s"
    local n
    for n in "${FAILED[@]}"; do
        echo "--- $n failures (logs/$n.log):"
        awk '/^running |^test / { c = 0 }
             /^ *failed case: |^FAILED case: / && c++ { more++; next }
             { print }
             END { if (more) print "    (" more " more failed cases in logs/'"$n"'.log)" }' \
            "$OUTDIR/$n.failures" | head -n 12
    done
    printf '%s\n' "${STEPS[@]}"
}

# The lines of a log that say what failed, in order: FAILED, panicked (with the message on the next
# line), CUDA_ERROR, failed case (case-insensitive), and compute-sanitizer's reports; each test's lines
# under its `running NAME` line. A case the runner printed as it happened ("FAILED case: X") is left out
# when its test's summary lists it ("    failed case: X"): each case once, and a case of a test that
# never finished (a fault, a hang) still shows.
failure_lines() {
    awk '
        { l[NR] = $0 }
        /^    failed case: / { listed[substr($0, 18)] = 1 }
        END {
            for (i = 1; i <= NR; i++) {
                s = tolower(l[i])
                if (l[i] ~ /^running /) { t = l[i]; continue }
                if (l[i] ~ /^test .* \.\.\. / || s ~ /^test result/) shown = t
                if (s ~ /^test result: ok/) continue
                if (l[i] ~ /^FAILED case: / && (substr(l[i], 14) in listed)) continue
                if (s ~ /failed|panicked|cuda_error|error summary: [1-9]|^========= (invalid|program hit|error|internal)/ \
                    || l[i - 1] ~ /panicked at/ || (l[i - 1] ~ /^========= (Invalid|Error)/ && l[i] ~ /^=========  +at /)) {
                    if (t != shown) { print t; shown = t }
                    print l[i]
                }
            }
        }' "$1"
}

# verdict RC LOG: PASS, or why not.
verdict() {
    local rc=$1 log=$2
    # compute-sanitizer that cannot attach (gVisor) says so in its own lines; that is the machine, not the code.
    if [ "$rc" -ne 0 ] && ! grep -q "ERROR SUMMARY: [1-9]" "$log" \
        && grep -qE "^========= (Internal Sanitizer Error|Error: .*(not supported|Target application terminated before first instrumented|[Dd]ebugger))" "$log"; then
        echo UNSUPPORTED
    elif [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
        echo TIMEOUT
    elif [ "$rc" -gt 128 ]; then
        echo "FAIL(SIG$(kill -l $((rc - 128)) 2>/dev/null || echo $((rc - 128))))"
    elif [ "$rc" -ne 0 ]; then
        echo "FAIL($rc)"
    elif grep -q "^SKIPPED" "$log"; then
        echo SKIPPED # a suite that found no CUDA backend at all: a failure of the check unless dry
    elif grep -q "^test result: ok\. 0 passed" "$log"; then
        echo EMPTY # a name filter that matched no test
    else
        echo PASS
    fi
}

# Whether a verdict lets the check pass: UNSUPPORTED is the machine (the sanitizer refused), and a dry
# run skips what needs a GPU, torch or a sanitizer.
passing() { [ "$1" = PASS ] || [ "$1" = UNSUPPORTED ] || { dry && [ "$1" = SKIPPED ]; }; }

# The test running when a log ends: a hang or a fault names it.
last_test() { grep "^running " "$1" 2>/dev/null | tail -n 1 | cut -d' ' -f2; }

# A table note for a step cut short: the test it was in, if it runs tests.
cut_in() {
    local t
    t=$(last_test "$1")
    [ -z "$t" ] || echo "in $t"
}

# report NAME VERDICT LOG: what matters of a finished step's log, failures first.
report() {
    local name=$1 v=$2 log=$3 f=$OUTDIR/$1.failures
    failure_lines "$log" >"$f"
    local n
    n=$(wc -l <"$f")
    # A passing suite prints no failure lines; in a passing log such lines are the tests' own prose.
    passing "$v" && n=0
    if [ "$n" -gt 0 ]; then
        head -n 40 "$f"
        [ "$n" -gt 40 ] && echo "... $((n - 40)) more failure lines in logs/$name.log"
    fi
    [ "$v" = TIMEOUT ] && echo "timed out in test: $(last_test "$log")"
    [ "$v" = EMPTY ] && echo "the name filter matched no test"
    grep -E ": running on |^SKIPPED|ERROR SUMMARY" "$log"
    [ "$n" -eq 0 ] && grep "^test result" "$log"
    # Nothing recognisable (a crash before the runner printed, a script error): the end of the log.
    if [ "$n" -eq 0 ] && ! passing "$v" && ! grep -qE "^test result|^SKIPPED" "$log"; then tail -n 8 "$log"; fi
}

# step NAME LIMIT CMD...: runs CMD (when $LCM_STEPS wants NAME) with a time limit cut to what the deadline
# leaves, logs it to $OUTDIR/NAME.log, prints the lines that matter, records the verdict. Succeeds when
# the verdict passes.
step() {
    wanted "$1" || return 0
    run_step "$@"
}

run_step() {
    local name=$1 limit=$2 t0=$SECONDS log=$OUTDIR/$1.log l
    shift 2
    l=$(left)
    [ "$l" -lt "$limit" ] && limit=$l
    if [ "$limit" -lt 5 ]; then
        echo "=== $name: no time left"
        record "$name" NO_TIME 0
        return 1
    fi
    echo "=== $name (limit ${limit}s): $*"
    # In the background and waited for: bash runs a trap only between commands, and `wait` is one it
    # interrupts, so a TERM from the device tool is handled at once, not when the step ends.
    CURRENT=$name CURRENT_T0=$t0
    timeout --kill-after=10 "$limit" "$@" >"$log" 2>&1 &
    CURRENT_PID=$!
    wait "$CURRENT_PID"
    local rc=$? v
    CURRENT='' CURRENT_PID=''
    v=$(verdict $rc "$log")
    report "$name" "$v" "$log"
    record "$name" "$v" $((SECONDS - t0)) "$([ "$v" != TIMEOUT ] || cut_in "$log")"
    passing "$v"
}

# suite NAME LIMIT [VAR=VALUE...] EXE [FILTER...]: a GPU test suite as a step. When its log holds a
# CUDA_ERROR_*, each test it struck (the `running NAME` line last printed before the error; at most 3)
# reruns alone with LCM_CUDA_GRAPHS=0 CUDA_LAUNCH_BLOCKING=1 as step NAME.rerun.TEST, so the error is
# reported at the launch that caused it and the failure line names the kernel.
suite() {
    local name=$1 limit=$2
    shift 2
    wanted "$name" || return 0
    run_step "$name" "$limit" env "$@" && return 0
    [ -f "$OUTDIR/$name.log" ] || return 1
    local t
    for t in $(awk '/^running / { t = $2 } toupper($0) ~ /CUDA_ERROR/ && t != "" && !seen[t]++ { print t }' \
        "$OUTDIR/$name.log" | head -n 3); do
        run_step "$name.rerun.$t" 60 env LCM_CUDA_GRAPHS=0 CUDA_LAUNCH_BLOCKING=1 "$@" "$t"
    done
    return 1
}

# bg_start NAME LIMIT CMD...: the same as step, in the background (collect with bg_wait NAME).
bg_start() {
    local name=$1 limit=$2
    shift 2
    BG_T0[$name]=$SECONDS
    echo "=== $name (background, limit ${limit}s): $*"
    timeout --kill-after=10 "$limit" "$@" >"$OUTDIR/$name.log" 2>&1 &
    BG_PID[$name]=$!
}

bg_wait() {
    local name=$1 v rc
    CURRENT=$name CURRENT_T0=${BG_T0[$name]}
    wait "${BG_PID[$name]}"
    rc=$?
    CURRENT=
    unset "BG_PID[$name]"
    v=$(verdict $rc "$OUTDIR/$name.log")
    echo "=== $name (background) finished: $v"
    report "$name" "$v" "$OUTDIR/$name.log"
    passing "$v" || tail -n 6 "$OUTDIR/$name.log"
    record "$name" "$v" $((SECONDS - BG_T0[$name]))
    [ "$v" = PASS ]
}

# The device tool ends a call at its timeout with a signal: record the step it cut short and what ran,
# end what this script started (each by its id), and write the summary.
interrupted() {
    trap - TERM INT
    echo "=== interrupted by SIG$1 during ${CURRENT:-no step}"
    [ -n "$CURRENT_PID" ] && kill -TERM "$CURRENT_PID" 2>/dev/null
    local p
    for p in "${BG_PID[@]}"; do kill -TERM "$p" 2>/dev/null; done
    if [ -n "$CURRENT" ]; then
        report "$CURRENT" INTERRUPTED "$OUTDIR/$CURRENT.log"
        record "$CURRENT" INTERRUPTED $((SECONDS - CURRENT_T0)) "$(cut_in "$OUTDIR/$CURRENT.log")"
    fi
    finish "interrupted by SIG$1"
}

# finish [STATE]: the summary (table last) printed and written to $FINAL with the logs and $RESULTS;
# the verdict (PASS when every step passed) in its header and, for a full run, in $VERDICT_FILE; exit
# status 1 unless PASS.
finish() {
    local state=${1:-finished} s verdict=PASS
    for s in "${STEPS[@]}"; do
        read -r _ s _ <<<"$s"
        passing "$s" || verdict=FAIL
    done
    [ "$state" = finished ] || verdict=FAIL
    echo
    summary "$state, verdict $verdict" | tee "$FINAL/summary.txt"
    tar -C "$WORK" -czf "$FINAL/logs.tgz" logs
    for s in "${RESULTS[@]}"; do [ -f "$s" ] && cp "$s" "$FINAL/"; done
    # What device-bench.sh looks for on this (still warm) machine before it runs: a full check's verdict.
    [ -n "${LCM_STEPS:-}" ] || echo "$verdict bundle $STAMP" >"$VERDICT_FILE"
    [ $verdict = PASS ] || exit 1
}
