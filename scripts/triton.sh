#!/usr/bin/env bash
# Serving lcm from NVIDIA Triton Inference Server (docs/triton.md):
#   scripts/triton.sh repo MODEL OUT_DIR [--instances N] [--device cpu|cuda|auto] [--lora FILE[:SCALE]]...
#                                        [--max-batch N] [--queue-delay-us US]
#       writes a model repository holding the model `lcm` (OUT_DIR/lcm/config.pbtxt, OUT_DIR/lcm/1/)
#       for that model folder or single-file checkpoint;
#   scripts/triton.sh serve REPO [--http-port P] [--grpc-port P] [--metrics-port P]
#       installs tritonserver (scripts/triton-venv.sh), builds the backend if it is missing, and runs
#       tritonserver on REPO in the foreground until SIGTERM / Ctrl-C.
# The backend and the repo tool build with cargo's release profile (LCM_TRITON_PROFILE=<profile>
# picks another); LCM_TRITON_LIB=/path/libtriton_lcm.so uses a backend built elsewhere.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PROFILE="${LCM_TRITON_PROFILE:-release}"
case "$PROFILE" in dev | test) OUT=debug ;; bench) OUT=release ;; *) OUT="$PROFILE" ;; esac
TARGET="${CARGO_TARGET_DIR:-$ROOT/target}/$OUT"
usage() { sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }

cmd="${1:-}"
[ $# -gt 0 ] && shift
case "$cmd" in
repo)
    [ $# -ge 2 ] || usage
    (cd "$ROOT" && cargo build --locked -q --profile "$PROFILE" -p lcm-triton --bin lcm-triton-repo)
    exec "$TARGET/lcm-triton-repo" "$@"
    ;;
serve)
    [ $# -ge 1 ] || usage
    repo="$(cd "$1" && pwd)"
    shift
    http=8000 grpc=8001 metrics=8002
    while [ $# -gt 0 ]; do
        case "$1" in
        --http-port) http="$2"; shift 2 ;;
        --grpc-port) grpc="$2"; shift 2 ;;
        --metrics-port) metrics="$2"; shift 2 ;;
        *) echo "triton.sh serve: unknown argument $1" >&2; usage ;;
        esac
    done
    [ -f "$repo/lcm/config.pbtxt" ] || { echo "triton.sh serve: $repo/lcm/config.pbtxt not found (scripts/triton.sh repo writes it)" >&2; exit 1; }
    server="$("$ROOT/scripts/triton-venv.sh")"
    lib="${LCM_TRITON_LIB:-$TARGET/libtriton_lcm.so}"
    # `cargo test` leaves the test profile's backend in deps/ (not copied up).
    [ -n "${LCM_TRITON_LIB:-}" ] || [ -f "$lib" ] || [ ! -f "$TARGET/deps/libtriton_lcm.so" ] || lib="$TARGET/deps/libtriton_lcm.so"
    if [ ! -f "$lib" ]; then
        echo "building the backend ($PROFILE profile): $lib" >&2
        (cd "$ROOT" && cargo build --locked --profile "$PROFILE" -p lcm-triton --lib)
    fi
    # Triton loads <backend-directory>/lcm/libtriton_lcm.so for `backend: "lcm"`.
    backends="${CARGO_TARGET_DIR:-$ROOT/target}/triton-backends"
    mkdir -p "$backends/lcm"
    cp "$lib" "$backends/lcm/libtriton_lcm.so"
    exec "$server" --model-repository="$repo" --backend-directory="$backends" \
        --http-port="$http" --grpc-port="$grpc" --metrics-port="$metrics"
    ;;
*) usage ;;
esac
