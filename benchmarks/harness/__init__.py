"""The measurement harness: one run's options (``options``), the configurations and how each is built
(``workload``), one timing measurement (``measurement``), the memory worker and its server (``worker``), the
step-time calibration (``peaks``), the profiles (``profiles``), row building (``rows``) and the end-of-run
table (``summary``). The engines (matmul, scaling, exercises, parity) and the pytest modules (``bench_*.py``)
build on it; the CLI (``benchmarks/cli``) drives it."""
