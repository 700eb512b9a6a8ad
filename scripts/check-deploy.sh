#!/usr/bin/env bash
# Validates the Kubernetes objects in deploy/ against the Kubernetes API schemas (kubernetes-validate,
# pinned, from PyPI, in a venv at target/deploy-check or $LCM_DEPLOY_CHECK_VENV), strictly: an unknown
# or misspelt field is an error. The custom resources (KEDA's ScaledObject, KServe's InferenceService)
# have no schema in it and are reported as skipped; docs/deploy.md says how they were checked.
set -euo pipefail
cd "$(dirname "$0")/.."
VERSION=1.37.0
VENV="${LCM_DEPLOY_CHECK_VENV:-target/deploy-check}"
BIN="$VENV/bin/kubernetes-validate"
if ! { [ -x "$BIN" ] && [ "$("$BIN" --version 2>/dev/null | tr -d '\n')" = "$VERSION" ]; }; then
    python3 -m venv "$VENV"
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check "kubernetes-validate==$VERSION" >&2
fi
"$BIN" --strict --no-warn deploy/k8s/*.yaml deploy/kserve/*.yaml
