#!/usr/bin/env bash
# The README's setting on a GPU in one short run (about a minute on one H100/H200-class GPU): torchcfm's 36M CIFAR-10
# UNet (adm-unet, random weights) at the README's batch 128 and at 512: time per pass, per gradient step of the
# published scheme and of the cifar10-clip preset, per evaluation, and peak memory. Tried on the CPU
# (docs/performance.md, "The README's setting").
#   bash benchmarks/gpu_readme.sh OUT_DIR
set -euo pipefail
out=${1:-gpu-readme}
mkdir -p "$out"
py=${PYTHON:-.venv/bin/python}
for batch in 128 512; do
  $py benchmarks/readme_setting.py --device cuda --batch "$batch" --rounds 5 --json "$out/readme-$batch.json" \
    | tee "$out/readme-$batch.md"
done
