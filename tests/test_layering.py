"""The dependency direction of docs/architecture.md: benchmarks -> backends -> analytics, benchmarks -> reports;
analytics/ and reports/ import no deep-learning framework; nothing but benchmarks/ imports benchmarks."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import require_backend_or_skip

REPO = Path(__file__).resolve().parent.parent
FRAMEWORKS = ("torch", "tensorflow", "keras", "mxnet", "jax")


def _imports(path: Path) -> list[str]:
    """Every module ``path`` imports, at any depth (function-level imports included)."""
    out: list[str] = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append(node.module)
    return out


def _files(folder: str) -> list[Path]:
    return sorted((REPO / folder).rglob("*.py"))


@pytest.mark.parametrize("folder", ["analytics", "reports"])
def test_framework_free_folders_import_no_framework(folder: str) -> None:
    bad = [f"{p.relative_to(REPO)}: {m}" for p in _files(folder) for m in _imports(p) if m.split(".")[0] in FRAMEWORKS]
    assert bad == []


@pytest.mark.parametrize(
    ("folder", "forbidden"),
    [
        ("analytics", "backends"),
        ("analytics", "benchmarks"),
        ("reports", "backends"),
        ("reports", "benchmarks"),
        ("backends", "benchmarks"),
    ],
)
def test_imports_follow_the_dependency_direction(folder: str, forbidden: str) -> None:
    prefixes = (f"xfbench.{forbidden}", forbidden)
    bad = [
        f"{p.relative_to(REPO)}: {m}"
        for p in _files(folder)
        for m in _imports(p)
        if m == prefixes[1] or m.startswith(tuple(x + "." for x in prefixes)) or m == prefixes[0]
    ]
    assert bad == []


def test_the_scan_sees_imports_inside_functions(tmp_path: Path) -> None:
    """The check above could not fail if the AST walk missed function-level imports: prove it sees them."""
    f = tmp_path / "m.py"
    f.write_text("def f():\n    import torch.nn\n    from xfbench.benchmarks.harness import rows\n", encoding="utf-8")
    assert _imports(f) == ["torch.nn", "xfbench.benchmarks.harness"]


@pytest.mark.parametrize(
    "framework",
    [
        pytest.param("torch", marks=pytest.mark.torch),
        pytest.param("tensorflow", marks=pytest.mark.tensorflow),
        pytest.param("mxnet", marks=pytest.mark.mxnet),
    ],
)
def test_importing_analytics_and_reports_loads_no_framework(framework: str) -> None:
    """Run in each framework's env, where the framework could be imported by accident."""
    require_backend_or_skip(framework)
    mods = [
        "xfbench." + ".".join(p.relative_to(REPO).with_suffix("").parts)
        for folder in ("analytics", "reports")
        for p in _files(folder)
        if p.name != "__main__.py"
    ]
    code = (
        "import importlib, sys\n"
        f"for m in {mods!r}: importlib.import_module(m.removesuffix('.__init__'))\n"
        f"print(sorted(m for m in sys.modules if m.split('.')[0] in {FRAMEWORKS!r}))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1] == "[]"
