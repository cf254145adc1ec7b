"""Issue 21's isolation of the tied head's gradient memory in PyTorch, outside any dispatch mode: one
``Embedding(V, d)`` whose matrix is also the head (``F.linear(h, E.weight)``), or an untied head of the same size,
one backward, the process's resident memory sampled every 0.5 ms (``/proc/self/statm``). Prints JSON: the table's
bytes and the peak above the pre-backward baseline.

    python benchmarks/diagnostics/tied_grad_probe.py tied [V d T]

Measured on torch 2.13 CPU (V=200,000, d=256: a 204.8 MB table): tied 621.9 MB above the baseline (three tables
alive at once: the head's gradient, the gather's and their sum), untied 416.5 MB (two). ``analytics/timeline.py``
``_accumulate`` follows it.
"""

from __future__ import annotations

import gc
import json
import sys
import threading
import time

import torch
import torch.nn.functional as F


def _rss() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * 4096


def main(argv: list[str]) -> int:
    mode = argv[0] if argv else "tied"
    if mode not in ("tied", "untied"):
        print(f"mode {mode!r}; allowed: tied, untied", file=sys.stderr)
        return 2
    vocab, dim, tokens = (int(v) for v in (argv[1:4] if len(argv) >= 4 else (200_000, 256, 8)))
    torch.set_num_threads(1)
    emb = torch.nn.Embedding(vocab, dim)
    x = torch.randint(0, vocab, (1, tokens))
    head = emb.weight if mode == "tied" else torch.nn.Parameter(torch.randn(vocab, dim) * 0.01)
    loss = F.linear(emb(x), head).sum()
    gc.collect()
    peak, stop = [0], [False]

    def sample() -> None:
        while not stop[0]:
            peak[0] = max(peak[0], _rss())
            time.sleep(0.0005)

    base = _rss()
    t = threading.Thread(target=sample)
    t.start()
    loss.backward()
    stop[0] = True
    t.join()
    peak[0] = max(peak[0], _rss())
    print(json.dumps({"mode": mode, "table_bytes": vocab * dim * 4, "peak_above_base_bytes": peak[0] - base}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
