#!/usr/bin/env bash
# The prepared GPU check: run on a lent GPU machine from the repository root, e.g. through the
# device tool:  bash benchmarks/gpu_check.sh   (about 5 minutes on an H100/H200)
# Writes benchmarks/gpu-check.json; compare with benchmarks/gpu-check-expected.json (the
# planner's figures: tools/benchmark.py plan) and record both in benchmarks/README.md.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
# 1.3B, 81 frames at 480x832: attention backends, bf16 vs fp32, a bf16 training step (MFU),
# a 50-step CFG render of the DiT, peak memory
"$PY" tools/gpu_check.py --preset wan_1_3b --frames 81 --size 480x832 --steps 5 \
    --render-steps 50 --out benchmarks/gpu-check.json
# the pipeline end to end on the GPU (bf16, tiled VAE), random weights, every condition live
"$PY" tools/benchmark.py sample --json --preset wan_1_3b --vae-dim 96 --frames 81 \
    --height 480 --width 832 --steps 4 --repeats 1 --device cuda --dtype bfloat16 \
    > benchmarks/gpu-sample.json
# the DiT forward+backward overhead against plain Wan at real width
"$PY" tools/benchmark.py dit --json --device cuda --dim 1536 --heads 12 --layers 4 \
    --frames 81 --size 480 --batch 1 --repeats 5 > benchmarks/gpu-dit.json
echo "wrote benchmarks/gpu-check.json, gpu-sample.json, gpu-dit.json"
