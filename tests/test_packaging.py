"""The built wheel works outside the checkout: one ``xfbench`` namespace, probe specs shipped, reports
written under the working directory.

The wheel is built once per session (``pip wheel .``) and unpacked into a folder that plays site-packages;
the commands run from an unrelated directory with only that folder on ``PYTHONPATH`` (the checkout is not
importable there), which is what ``pip install .`` gives a user.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from conftest import require_or_skip

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not (REPO / "pyproject.toml").is_file():
        pytest.skip("not a source checkout: no pyproject.toml to build a wheel from")
    out = tmp_path_factory.mktemp("wheel")
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(REPO), "--no-deps", "-q", "-w", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if proc.returncode != 0:
        pytest.fail(f"pip wheel failed: {proc.stderr[-1500:]}")
    (found,) = out.glob("xfbench-*.whl")
    return found


@pytest.fixture(scope="module")
def site(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    target = tmp_path_factory.mktemp("site")
    with zipfile.ZipFile(wheel) as zf:
        zf.extractall(target)
    return target


def _run(site: Path, cwd: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(site)
    return subprocess.run(
        [sys.executable, "-m", "xfbench.benchmarks.cli", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def test_wheel_has_one_namespace_and_the_probe_specs(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
    top = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert top == {"xfbench"}, top
    for family in ("conv", "dense", "lstm"):
        assert f"xfbench/benchmarks/probes/{family}.json" in names
    for pkg in ("analytics", "backends", "backends/torch", "benchmarks", "reports"):
        assert f"xfbench/{pkg}/__init__.py" in names


def test_installed_package_imports_from_site_not_checkout(site: Path, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(site)
    code = (
        "import xfbench, xfbench.benchmarks.harness.rows as m; "
        "print(xfbench.__file__); print(m.PROBES); print(sorted(p.name for p in m.PROBES.glob('*.json')))"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    pkg_file, probes, listing = proc.stdout.splitlines()
    assert Path(pkg_file).is_relative_to(site)
    assert Path(probes).is_relative_to(site)
    assert listing == "['attn.json', 'attn2.json', 'bn.json', 'conv.json', 'conv2.json', 'dense.json', 'lstm.json']"


def test_models_and_predict_outside_the_checkout(site: Path, tmp_path: Path) -> None:
    proc = _run(site, tmp_path, "models")
    assert proc.returncode == 0, proc.stderr
    assert "cnn3" in proc.stdout and "alexnet" in proc.stdout
    proc = _run(site, tmp_path, "predict", "cnn3", "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["params"] == 903_400  # HOML ch14 ex2's worked answer


@pytest.mark.torch
def test_run_outside_the_checkout_writes_under_the_working_directory(site: Path, tmp_path: Path) -> None:
    require_or_skip("torch", "torch", reason="PyTorch is not installed (tox -e torch)")
    proc = _run(
        site,
        tmp_path,
        "run",
        "--backend",
        "torch",
        "--models",
        "mlp",
        "--phase",
        "inference",
        "--batch",
        "4",
        "--suite",
        "models",
        "--rounds",
        "2",
        timeout=600,
    )
    assert proc.returncode == 0, (proc.stdout[-2000:], proc.stderr[-2000:])
    reports = list((tmp_path / "reports" / "runs").glob("*.csv"))
    assert len(reports) == 1, reports
    text = reports[0].read_text()
    assert ",mlp," in text and ",ok," in text
    # nothing was written into the installed package
    assert not list(site.rglob("runs"))
