#!/usr/bin/env bash
# Issue 20's check: two fresh `tox -m bench` runs per ISA setting, each followed by the held-out spec files at
# batch 1 in every framework, each run's CSVs copied to reports/runs/pairs/<setting>-<n>/, then
# benchmarks/diagnostics/run_pair.py on each pair. Usage (from the repository root):
#
#     benchmarks/diagnostics/run_pairs.sh default avx2        # the ISA settings to test, in order
#
# `default` runs with no cap; `avx2` with ONEDNN_MAX_CPU_ISA=AVX2 and MKL_ENABLE_INSTRUCTIONS=AVX2. The kept
# calibrations are cleared first (XFBENCH_CLEAR_CALIBRATION=0 keeps them): a setting's first run calibrates, its
# second reuses that calibration, as a user's runs would.
set -euo pipefail
cd "$(dirname "$0")/../.."
SPECS=${XFBENCH_PAIR_SPECS:-tests/data/specs/tiny.yaml,tests/data/specs/tinyres.yaml,tests/data/specs/widenet.yaml}
OUT=reports/runs/pairs
mkdir -p "$OUT"
if [ "${XFBENCH_CLEAR_CALIBRATION:-1}" = 1 ]; then rm -rf "${XFBENCH_CACHE_DIR:-$HOME/.cache/xfbench}/calibration"; fi
for setting in "$@"; do
  case "$setting" in
    default) caps=() ;;
    avx2) caps=(ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2) ;;
    *) echo "unknown ISA setting $setting; allowed: default, avx2" >&2; exit 2 ;;
  esac
  for n in 1 2; do
    dir="$OUT/$setting-$n"
    rm -rf "$dir" reports/runs/bench
    mkdir -p "$dir"
    start=$(date +%s)
    env "${caps[@]}" tox -m bench
    echo "tox -m bench ($setting, run $n): $(( $(date +%s) - start )) s" | tee "$dir/wall.txt"
    cp reports/runs/bench/*.csv "$dir/"
    for fw in torch tensorflow mxnet; do
      env "${caps[@]}" ".tox/bench-$fw/bin/python" -m pytest benchmarks --benchmark-only --suite models \
        --backend "$fw" --models "$SPECS" --batch 1 --report-dir "$dir/specs" -p no:cacheprovider -q
    done
    cp "$dir"/specs/*.csv "$dir/"
  done
  .tox/bench-torch/bin/python benchmarks/diagnostics/run_pair.py "$OUT/$setting-1" "$OUT/$setting-2" --label "$setting" | tee "$OUT/$setting.md"
done
