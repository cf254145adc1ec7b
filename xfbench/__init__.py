"""xfbench: framework-agnostic deep-learning benchmarks beside analytic predictions.

The installed wheel holds one namespace: ``xfbench.analytics``, ``xfbench.backends``,
``xfbench.benchmarks`` and ``xfbench.reports`` (no generic top-level names in site-packages).
In a source checkout those four are the repository's top-level folders; this package finds them
there by adding the checkout's root to its ``__path__`` (only when it sits in a checkout, i.e. beside
``pyproject.toml`` and ``analytics/``), so ``python -m xfbench.benchmarks.cli`` works without installing.
"""

from __future__ import annotations

from pathlib import Path

_HERE = Path(__file__).resolve().parent
_ROOT = _HERE.parent
if not (_HERE / "analytics").is_dir() and (_ROOT / "pyproject.toml").is_file() and (_ROOT / "analytics").is_dir():
    __path__.append(str(_ROOT))  # type: ignore[name-defined]

__version__ = "0.1.0"
