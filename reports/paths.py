"""Where xfbench reads its own files and writes the user's, for a checkout and an installed wheel alike.

Results go under the *working directory* (``./reports/runs``, ``./reports/exercises``), never into the
installed package's folder. Subprocesses (memory workers, distributed workers) import ``xfbench`` from
the same place as this process: :func:`subprocess_env` puts its import root on ``PYTHONPATH``.
"""

from __future__ import annotations

import os
from pathlib import Path

import xfbench

# The folder that holds the ``xfbench`` package (site-packages, or a source checkout's root).
IMPORT_ROOT = Path(xfbench.__file__).resolve().parent.parent


def source_checkout() -> Path | None:
    """The source checkout this code runs from, or None for an installed wheel."""
    if (IMPORT_ROOT / "pyproject.toml").is_file() and (IMPORT_ROOT / "analytics").is_dir():
        return IMPORT_ROOT
    return None


def reports_dir() -> Path:
    """``./reports`` of the working directory: where runs, comparisons and exercise reports go."""
    return Path.cwd() / "reports"


def runs_dir() -> Path:
    """The default directory of run CSVs: ``./reports/runs``."""
    return reports_dir() / "runs"


def subprocess_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """``os.environ`` (plus ``extra``) with the import root first on ``PYTHONPATH``."""
    env = {**os.environ, **(extra or {})}
    parts = [str(IMPORT_ROOT), *(p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p)]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(parts))
    return env
