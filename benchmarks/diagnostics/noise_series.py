"""The run's noise probe repeated on an idle machine: is the run-to-run spread the suite's or the machine's?

``python benchmarks/diagnostics/noise_series.py OUT.jsonl SECONDS``: the noise probe of every benchmark run
(benchmarks/harness/noise.py: a 512^3 numpy GEMM in 3 fresh processes, median of their medians) taken every 5 s
for ``SECONDS`` with nothing else of ours running; one JSON row per probe with the time and the load average.
Issue 20: on the 2-core EPYC (2026-12-07) 21 probes in 4 minutes read 1.45 .. 2.22 ms (54% spread), the same
spread the probes read inside benchmark runs (60-110%), so that spread is the machine's, not the suite's.
"""

from __future__ import annotations

import json
import os
import sys
import time

from xfbench.benchmarks.harness import noise


def main(out_path: str, seconds: float) -> None:
    end = time.time() + seconds
    with open(out_path, "w") as out:
        i = 0
        while time.time() < end:
            row = noise.probe(f"idle-{i}")
            row["t"] = time.time()
            row["load1"] = os.getloadavg()[0]
            out.write(json.dumps(row) + "\n")
            out.flush()
            i += 1
            time.sleep(5)


if __name__ == "__main__":
    main(sys.argv[1], float(sys.argv[2]))
