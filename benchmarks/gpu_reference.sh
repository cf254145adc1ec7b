#!/usr/bin/env bash
# Runs the GPU paths of all three frameworks on a GPU machine and merges the run files into one CSV in $OUT:
#   OUT=/some/dir bash benchmarks/gpu_reference.sh [tests|quick|full|tensorflow|mxnet|scale|all]
#
# Interpreters (each framework needs its own environment; MXNet 1.9.1 imports only with numpy<1.24):
#   PY     python with a CUDA build of PyTorch (default: python)
#   TF_PY  python with TensorFlow for CUDA; unset: a venv $VENVS/tensorflow with tensorflow[and-cuda]==2.21.0
#   MX_PY  python with MXNet for CUDA; unset: a venv $VENVS/mxnet with mxnet-cu117==1.9.1 (the newest CUDA
#          build of MXNet's last release; constraints/mxnet.txt pins numpy<1.24)
# nvidia-ml-py (NVML: per-process GPU memory) is installed into every interpreter used.
# TF32: XFBENCH_TF32=on|off (default off: float32 is IEEE float32 in all three frameworks).
# Every step logs to $OUT/<step>.log; the script goes on after a failing step and exits 1 if any step failed.
set -u -o pipefail
export PYTHONPATH="$PWD" PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=2
OUT="${OUT:-reports/runs/gpu}"
RUNS="${RUNS:-/tmp/xfbench-gpu-runs}"
VENVS="${VENVS:-/tmp/xfbench-gpu-venvs}"
PY="${PY:-python}"
TF_PY="${TF_PY:-}"
MX_PY="${MX_PY:-}"
mkdir -p "$OUT" "$RUNS" "$VENVS"
part="${1:-all}"
failed=()

# step NAME CMD...: runs CMD, its output to the terminal (last lines) and to $OUT/NAME.log; records a failure.
step() {
  local name="$1"
  shift
  echo "== $name: $*"
  if "$@" 2>&1 | tee "$OUT/$name.log" | tail -30; then
    echo "== $name: ok"
  else
    echo "== $name: FAILED (see $OUT/$name.log)"
    failed+=("$name")
  fi
}

want() { [ "$part" = all ] || [ "$part" = "$1" ]; }

ensure_nvml() { "$1" -m pip install -q "nvidia-ml-py>=12"; }

tf_python() {
  if [ -z "$TF_PY" ]; then
    if [ ! -x "$VENVS/tensorflow/bin/python" ]; then
      python3 -m venv "$VENVS/tensorflow" || return 1
      "$VENVS/tensorflow/bin/python" -m pip install -q -e ".[gpu]" "tensorflow[and-cuda]==2.21.0" "hypothesis>=6" \
        || return 1
    fi
    TF_PY="$VENVS/tensorflow/bin/python"
  fi
  ensure_nvml "$TF_PY"
}

mx_python() {
  if [ -z "$MX_PY" ]; then
    if [ ! -x "$VENVS/mxnet/bin/python" ]; then
      python3 -m venv "$VENVS/mxnet" || return 1
      PIP_CONSTRAINT="$PWD/constraints/mxnet.txt" "$VENVS/mxnet/bin/python" -m pip install -q -e ".[gpu]" \
        "mxnet-cu117==1.9.1" "numpy<1.24" "hypothesis>=6" || return 1
    fi
    MX_PY="$VENVS/mxnet/bin/python"
  fi
  ensure_nvml "$MX_PY"
}

# The GPU tests and GPU parity of one framework, then its quick benchmark profile on the GPU.
framework_gpu() {
  local name="$1" py="$2" tests="$3"
  step "$name-gpu-tests" "$py" -m pytest $tests tests/test_backends.py tests/test_gpu_paths.py tests/test_scaling.py \
    tests/test_matmul.py -m "$name" -q -p no:cacheprovider -rs
  step "$name-gpu-parity" "$py" -m xfbench.benchmarks.cli parity --backend "$name" --device gpu
  step "$name-gpu-quick" "$py" -m pytest benchmarks --benchmark-only --backend "$name" --device gpu --profile quick \
    --suite models --report-dir "$RUNS" -p no:cacheprovider -q -rs
}

nvidia-smi --query-gpu=name,memory.total,driver_version,pci.bus_id --format=csv | tee "$OUT/nvidia-smi.txt"
ensure_nvml "$PY"

if want tests; then
  step torch-gpu-tests "$PY" -m pytest tests/test_backend_torch.py tests/test_backends.py tests/test_gpu_paths.py \
    tests/test_scaling.py tests/test_matmul.py -m "torch or not (tensorflow or mxnet)" -q -p no:cacheprovider -rs
  step torch-gpu-parity "$PY" -m xfbench.benchmarks.cli parity --backend torch --device gpu
fi
if want quick; then
  step torch-gpu-quick "$PY" -m pytest benchmarks --benchmark-only --backend torch --device gpu --profile quick \
    --report-dir "$RUNS" -p no:cacheprovider -q -rs
  # OOM probe: once through the memory worker, once in-process (--no-memory); both must leave an oom row.
  step torch-gpu-oom-worker "$PY" -m pytest benchmarks --benchmark-only --backend torch --device gpu --models vgg16 \
    --batch 4096 --phase training --suite models --report-dir "$RUNS" -p no:cacheprovider -q -rs
  step torch-gpu-oom-inprocess "$PY" -m pytest benchmarks --benchmark-only --backend torch --device gpu \
    --models vgg16 --batch 4096 --phase training --suite models --no-memory --report-dir "$RUNS" \
    -p no:cacheprovider -q -rs
  step matmul-gpu-quick "$PY" -m xfbench.benchmarks.cli matmul --quick --backend numpy,torch --report-dir "$RUNS"
fi
if want tensorflow; then
  if tf_python; then
    framework_gpu tensorflow "$TF_PY" tests/test_backend_tensorflow.py
  else
    echo "== tensorflow: could not set up an interpreter"
    failed+=("tensorflow-setup")
  fi
fi
if want mxnet; then
  if mx_python; then
    framework_gpu mxnet "$MX_PY" tests/test_backend_mxnet.py
  else
    echo "== mxnet: could not set up an interpreter (mxnet-cu117 1.9.1 may not exist for this platform)"
    failed+=("mxnet-setup")
  fi
fi
if want scale; then
  pythons=()
  if [ "$part" = scale ]; then
    tf_python || echo "== scale: no TensorFlow interpreter, its rows will be skipped"
    mx_python || echo "== scale: no MXNet interpreter, its rows will be skipped"
  fi
  [ -n "$TF_PY" ] && pythons+=(--python "tensorflow=$TF_PY")
  [ -n "$MX_PY" ] && pythons+=(--python "mxnet=$MX_PY")
  # Default worker counts on a GPU: 1, 2, 4, ... up to the GPUs this process sees (one GPU per worker).
  step scale-gpu "$PY" -m xfbench.benchmarks.cli scale --device gpu --model lenet,mlp,cnn3 --steps 10 \
    ${pythons[@]+"${pythons[@]}"} --report-dir "$RUNS"
fi
if want full; then
  step torch-gpu-full "$PY" -m pytest benchmarks --benchmark-only --backend torch --device gpu --profile full \
    --report-dir "$RUNS" -p no:cacheprovider -q -rs
  step torch-cpu-quick "$PY" -m pytest benchmarks --benchmark-only --backend torch --device cpu --profile quick \
    --report-dir "$RUNS" -p no:cacheprovider -q -rs
fi
step merge "$PY" -m xfbench.benchmarks.cli merge "$RUNS"/*.csv -o "$OUT/gpu-reference-$part.csv"
if [ "${#failed[@]}" -gt 0 ]; then
  echo "failed steps: ${failed[*]}"
  exit 1
fi
echo "all steps passed; report: $OUT/gpu-reference-$part.csv"
