#!/usr/bin/env bash
# The demo at 128² on a lent GPU machine (issue 17, item 5; docs/demo.md "Why expression does
# not show"): run from the repository root, e.g. through the device tool:
#   bash benchmarks/gpu_demo_128.sh        (not yet run on a GPU: budget about 10 minutes)
# It trains the demo's recipe at 128² with a width-16 VAE (the VAE phases, the latent cache
# and the DiT stages on the GPU; the data and the expression encoder on the CPU's cores), then
# renders and scores it. The same command on this 2-core CPU takes 5 to 6 hours (measured
# step times in docs/demo.md). Writes outputs/demo128/ (gitignored) and copies metrics.json
# to benchmarks/gpu-demo128-metrics.json.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
RECIPE=(output_dir=outputs/demo128 checkpoints=outputs/demo128/checkpoints device=cuda
        size=128 data.size=128 data.workers=16 vae.dim=16 threads=4
        "expression_encoder=[time_limit_minutes=6,threads=4]")
"$PY" tools/demo.py train "${RECIPE[@]}"
"$PY" tools/demo.py render --checkpoints outputs/demo128/checkpoints \
    --out outputs/demo128/render "${RECIPE[@]}"
cp outputs/demo128/render/metrics.json benchmarks/gpu-demo128-metrics.json
echo "wrote benchmarks/gpu-demo128-metrics.json (outputs/demo128/render: videos, sheet)"
