#!/usr/bin/env bash
# Reproduces reports/reference/*-gpu*.csv on a GPU machine with PyTorch (CUDA) installed:
#   OUT=/some/dir bash benchmarks/gpu_reference.sh [tests|quick|full]
# Runs the torch GPU tests, GPU parity, the benchmark suite on the GPU (and an OOM probe), and merges the
# run files into one CSV in $OUT.
set -u
export PYTHONPATH="$PWD" PYTHONUNBUFFERED=1
OUT="${OUT:-reports/runs/gpu}"
RUNS="${RUNS:-/tmp/xfbench-gpu-runs}"
mkdir -p "$OUT" "$RUNS"
part="${1:-all}"
if [ "$part" = tests ] || [ "$part" = all ]; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/nvidia-smi.txt"
  python -m pytest tests/test_backend_torch.py tests/test_backends.py -m torch -q -p no:cacheprovider -rs 2>&1 \
    | tail -40 | tee "$OUT/gpu-tests.log"
  python -m xfbench.benchmarks.cli parity --backend torch --device gpu 2>/dev/null | tee "$OUT/gpu-parity.log"
fi
if [ "$part" = quick ] || [ "$part" = all ]; then
  python -m pytest benchmarks --benchmark-only --backend torch --device gpu --profile quick \
    --report-dir "$RUNS" -p no:cacheprovider -q 2>&1 | grep -v "^test_model_step\|^---\|^Name" | tail -30
  # OOM probe: once through the memory worker, once in-process (--no-memory); both must leave an oom row.
  python -m pytest benchmarks --benchmark-only --backend torch --device gpu --models vgg16 --batch 4096 \
    --phase training --report-dir "$RUNS" -p no:cacheprovider -q -rs 2>&1 | tail -5
  python -m pytest benchmarks --benchmark-only --backend torch --device gpu --models vgg16 --batch 4096 \
    --phase training --no-memory --report-dir "$RUNS" -p no:cacheprovider -q -rs 2>&1 | tail -5
fi
if [ "$part" = full ] || [ "$part" = all ]; then
  python -m pytest benchmarks --benchmark-only --backend torch --device gpu --profile full \
    --report-dir "$RUNS" -p no:cacheprovider -q 2>&1 | grep -v "^test_model_step\|^---\|^Name" | tail -30
  python -m pytest benchmarks --benchmark-only --backend torch --device cpu --profile quick \
    --report-dir "$RUNS" -p no:cacheprovider -q 2>&1 | grep -v "^test_model_step\|^---\|^Name" | tail -30
fi
python -m xfbench.benchmarks.cli merge "$RUNS"/*.csv -o "$OUT/gpu-host-torch-$part.csv"
