#!/usr/bin/env bash
# Issue 21's measurement: the transformer rows in every framework, in fresh benchmark processes, into
# reports/runs/transformers/<setting>/: the quick profile's gpt2_tiny and bert_tiny (batch 8, 64 tokens), the two
# held-out transformer spec files at batch 4 (no rule was fitted to them), and GPT-2 and BERT-base at batch 1
# (128 tokens). Usage (from the repository root, after `tox -m bench` has built the bench envs):
#
#     benchmarks/diagnostics/run_transformers.sh default      # or avx2 (oneDNN and MKL capped at AVX2)
set -euo pipefail
cd "$(dirname "$0")/../.."
setting=${1:-default}
case "$setting" in
  default) caps=() ;;
  avx2) caps=(ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2) ;;
  *) echo "unknown ISA setting $setting; allowed: default, avx2" >&2; exit 2 ;;
esac
OUT=reports/runs/transformers/$setting
mkdir -p "$OUT"
SPECS=tests/data/specs/heldout_xattn.yaml,tests/data/specs/heldout_lm.yaml
for fw in ${XFBENCH_FRAMEWORKS:-torch tensorflow mxnet}; do
  py=".tox/bench-$fw/bin/python"
  run() { env ${caps[@]+"${caps[@]}"} "$py" -m pytest benchmarks --benchmark-only --suite models --backend "$fw" \
      --report-dir "$OUT" -p no:cacheprovider -q "$@"; }
  start=$(date +%s)
  run --models gpt2_tiny,bert_tiny
  run --models "$SPECS" --batch 4
  if [ "${XFBENCH_LARGE:-1}" = 1 ]; then run --models gpt2,bert_base --batch 1; fi
  echo "$fw: $(( $(date +%s) - start )) s" | tee -a "$OUT/wall.txt"
done
