#!/usr/bin/env bash
# Installs the CUDA compiler the kernels are built with — nvcc 13.0, pinned — from PyPI into
# .toolchain/nvcc-venv, and points .toolchain/cuda at it (build.rs looks there after $NVCC, $CUDA_HOME
# and PATH). 13.0 because the GPU machines' driver (580, CUDA 13.0) cannot JIT PTX from a newer nvcc.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -x .toolchain/cuda/bin/nvcc ]; then
    echo "nvcc already installed: .toolchain/cuda/bin/nvcc"
    exit 0
fi
echo "installing nvcc 13.0 from PyPI into .toolchain/ (about 300 MB)..."
python3 -m venv .toolchain/nvcc-venv
.toolchain/nvcc-venv/bin/pip install --quiet --disable-pip-version-check \
    nvidia-cuda-nvcc==13.0.88 nvidia-cuda-crt==13.0.88 nvidia-nvvm==13.0.88 \
    nvidia-cuda-runtime==13.0.96 nvidia-cuda-cccl==13.0.85
cu13=$(.toolchain/nvcc-venv/bin/python -c 'import nvidia, os; print(os.path.join(list(nvidia.__path__)[0], "cu13"))')
ln -sfn "$cu13" .toolchain/cuda
.toolchain/cuda/bin/nvcc --version | tail -2
