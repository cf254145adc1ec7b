"""Where a benchmark row's wall time goes: ``XFBENCH_PHASE_LOG=FILE`` appends one JSON line per model row with the
seconds of each phase (the memory overhead probe, the memory processes, building, timing in this process and in the
others, the time prediction, the FLOP counter). Used to choose rounds, processes and batches by measurement (issue
20: `tox -m bench` under 10 minutes); without the variable it does nothing."""

from __future__ import annotations

import json
import os
import time

PHASE_LOG_ENV = "XFBENCH_PHASE_LOG"


class PhaseLog:
    """``mark(name)`` ends the phase ``name`` (seconds since the previous mark); ``write()`` appends the row's line."""

    def __init__(self, row: str) -> None:
        self.row = row
        self.path = os.environ.get(PHASE_LOG_ENV, "")
        self.last = time.perf_counter()
        self.phases: dict[str, float] = {}

    def mark(self, name: str) -> None:
        now = time.perf_counter()
        self.phases[name] = self.phases.get(name, 0.0) + now - self.last
        self.last = now

    def write(self) -> None:
        if self.path:
            with open(self.path, "a") as f:
                f.write(json.dumps({"row": self.row, "phases": self.phases}) + "\n")


__all__ = ["PHASE_LOG_ENV", "PhaseLog"]
