#!/usr/bin/env bash
# The text-to-image numbers that need a GPU, in one short run (about 5 minutes on one H100/H200-class GPU):
# SD3.5-medium's transformer configuration with random weights at 512 px, bf16 base, LoRA rank 16, 20 Euler steps
# per policy sample: step anatomy (time per step, images per second) and peak memory against a plain LoRA step,
# without and with gradient checkpointing. Tried on the CPU at 2 blocks / 64 px (docs/text-to-image.md).
#   bash benchmarks/gpu_t2i.sh OUT_DIR
set -euo pipefail
out=${1:-gpu-t2i}
mkdir -p "$out"
py=${PYTHON:-.venv/bin/python}
common=(--size sd3.5-medium --resolution 512 --device cuda --base bf16 --batch 4 --steps 20)
$py benchmarks/t2i_step.py "${common[@]}" --json "$out/sd35m-512.json" | tee "$out/sd35m-512.md"
$py benchmarks/t2i_step.py "${common[@]}" --checkpointing --only memory --json "$out/sd35m-512-ckpt.json" \
  | tee "$out/sd35m-512-ckpt.md"
