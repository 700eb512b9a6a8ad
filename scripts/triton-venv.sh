#!/usr/bin/env bash
# Triton Inference Server and its Python client, pinned, in a venv at target/triton-venv (or
# $LCM_TRITON_VENV): the nvidia-pytriton wheel ships a working tritonserver (2.51, TRITONBACKEND API
# 1.19) with libtritonserver.so and the shared libraries it needs (~29 MB of the venv's ~380 MB); the
# PyPI package named `tritonserver` is an empty placeholder. Idempotent and quick when installed
# (the pinned versions are checked, nothing is fetched). Prints the path of tritonserver.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTRITON_VERSION=0.7.0
TRITONCLIENT_VERSION=2.51.0
VENV="${LCM_TRITON_VENV:-target/triton-venv}"
PY="$VENV/bin/python"
check='
import importlib.metadata as m, importlib.util as u, pathlib, sys
assert m.version("nvidia-pytriton") == sys.argv[1] and m.version("tritonclient") == sys.argv[2]
import tritonclient.http, tritonclient.grpc
server = pathlib.Path(u.find_spec("pytriton").submodule_search_locations[0]) / "tritonserver/bin/tritonserver"
assert server.is_file()
print(server)
'
have() { [ -x "$PY" ] && "$PY" -c "$check" "$PYTRITON_VERSION" "$TRITONCLIENT_VERSION" 2>/dev/null; }
if ! have >/dev/null; then
    python3 -m venv "$VENV"
    # No pip cache: the wheels would take their size again on a CI disk that can be tight.
    "$PY" -m pip install -q --disable-pip-version-check --no-cache-dir \
        "nvidia-pytriton==$PYTRITON_VERSION" "tritonclient[http,grpc]==$TRITONCLIENT_VERSION" >&2
    have >/dev/null || { echo "triton-venv.sh: the pinned packages did not install into $VENV" >&2; exit 1; }
fi
have
