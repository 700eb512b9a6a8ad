#!/usr/bin/env bash
# Fuzzes lcm's loaders (fuzz/, cargo-fuzz + libFuzzer). docs/robustness.md lists the targets and logs runs.
#
#   scripts/fuzz.sh              smoke: every target for $FUZZ_SECONDS (default 15) s; what CI runs
#   scripts/fuzz.sh full         every target for $FUZZ_RUNS (default 1000000) executions
#   scripts/fuzz.sh full lora    the same, for the named targets only
#
# A smoke run is reproducible: it starts from the committed seeds alone (fuzz/seeds/<target>, read only,
# and a scratch corpus) with a fixed libFuzzer seed ($FUZZ_SEED, default 1), so CI replays the start of
# the exploration a longer local smoke run (a larger FUZZ_SECONDS) has already passed, and a CI failure
# is a change's doing, not chance. A full run explores anew (a random seed) and keeps what it finds in
# fuzz/corpus/<target> (not committed). A crash leaves its input in fuzz/artifacts/<target>/ and fails
# the script; reproduce with `cargo +nightly fuzz run -s none -a <target> <file>`.
set -euo pipefail
cd "$(dirname "$0")/.."

mode=${1:-smoke}
[ $# -gt 0 ] && shift
case "$mode" in
    smoke) limit=(-max_total_time="${FUZZ_SECONDS:-15}" -seed="${FUZZ_SEED:-1}") ;;
    full) limit=(-runs="${FUZZ_RUNS:-1000000}") ;;
    *) echo "usage: $0 [smoke|full] [target...]" >&2; exit 2 ;;
esac

if ! command -v cargo-fuzz >/dev/null; then
    cargo install cargo-fuzz --locked
fi

# cargo-fuzz passes unstable rustc flags (-Z…), which only a nightly compiler accepts. Use nightly when it
# is installed; otherwise RUSTC_BOOTSTRAP=1 lets the stable compiler accept them (the documented escape
# hatch the Rust project itself builds with): the fuzz build then needs no second toolchain.
if cargo +nightly --version >/dev/null 2>&1; then
    toolchain=(+nightly)
else
    toolchain=()
    export RUSTC_BOOTSTRAP=1
fi

# -s none: no AddressSanitizer. lcm's loaders are safe Rust (the one `unsafe`, the mmap, is bounds-checked
# by construction); what a fuzzer finds here is panics, overflows (-a: debug assertions on), huge
# allocations (-malloc_limit_mb) and hangs (-timeout), and without ASan it runs ~2x more inputs.
flags=(-s none -a --release)
# The serve_request target links the lcm library; its kernels are of no use to a fuzzer (CPU-only).
export LCM_NO_CUDA=1
cd fuzz
cargo "${toolchain[@]}" fuzz build "${flags[@]}"

targets=("$@")
[ ${#targets[@]} -eq 0 ] && mapfile -t targets < <(cargo "${toolchain[@]}" fuzz list)
mkdir -p logs
status=0
for t in "${targets[@]}"; do
    corpus="corpus/$t"
    if [ "$mode" = smoke ]; then
        corpus="corpus-smoke/$t"
        rm -rf "$corpus"
    fi
    mkdir -p "$corpus"
    log="logs/$t.log"
    # Long enough for the fixtures' real safetensors headers (up to ~120 KB of JSON). The tokenizer's
    # time grows with its input: 8 KB is already 100 times a prompt's 77 tokens, and a 100,000-character
    # prompt has its own test (crates/lcm-cli/tests/cli_bad_input.rs).
    max_len=131072
    [ "$t" = tokenizer ] && max_len=8192
    start=$(date +%s)
    if cargo "${toolchain[@]}" fuzz run "${flags[@]}" "$t" "$corpus" "seeds/$t" -- \
        "${limit[@]}" -max_len=$max_len -timeout=10 -rss_limit_mb=2560 -malloc_limit_mb=2048 \
        -print_final_stats=1 >"$log" 2>&1; then
        result=ok
    else
        result=CRASH
        status=1
        tail -n 40 "$log"
    fi
    execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo '?')
    printf '%-12s %-6s %10s execs %6s s\n' "$t" "$result" "$execs" "$(($(date +%s) - start))"
done
exit $status
