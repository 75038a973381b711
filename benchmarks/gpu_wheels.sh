#!/usr/bin/env bash
# Download (here, where pip reaches the registry) the wheels benchmarks/gpu_check.sh needs on the GPU
# machine, whose image lacks them: into .whl/ (git-ignored), carried with the device tool's `carry`.
# The GPU machine's own torch, numpy, timm, typer, rich, onnx... are used as they are.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .whl
platforms=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64
           --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform any)
for requirement in soundfile==0.14.0 cffi pycparser audiomentations==0.43.1 numpy-minmax numpy-rms \
                   python-stretch tomli_w==1.2.0; do
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    "${platforms[@]}" -d .whl "$requirement" || echo "could not fetch $requirement (gpu_check.sh reports what is missing)"
done
ls -la .whl
