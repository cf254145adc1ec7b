#!/usr/bin/env bash
# Issue 21's slopes: `xfbench memory` over batch and over sequence length (training, sgd) for gpt2_tiny in every
# framework's bench env, 3 fresh processes per point; the outputs go to reports/runs/transformers/sweeps/.
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=reports/runs/transformers/sweeps
mkdir -p "$OUT"
for fw in ${XFBENCH_FRAMEWORKS:-torch tensorflow mxnet}; do
  x=".tox/bench-$fw/bin/xfbench"
  "$x" memory gpt2_tiny --backend "$fw" --batch 2,4,8 --repeats 3 --no-plot | tee "$OUT/$fw-batch.txt"
  "$x" memory gpt2_tiny --backend "$fw" --batch 2 --seq 32,64,128,256 --repeats 3 --no-plot | tee "$OUT/$fw-seq.txt"
done
