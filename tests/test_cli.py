"""CLI tests: exit codes, one-line errors, JSON keys (run in-process and as a real subprocess)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from xfbench.analytics import CATALOG
from xfbench.benchmarks.cli import main

JSON_KEYS = {
    "model",
    "batch_size",
    "dtype",
    "params",
    "forward_flops",
    "forward_flops_with_bias",
    "backward_flops",
    "layers",
    "memory",
}
MEMORY_KEYS = {"inference_bytes", "training_bytes", "textbook_inference_bytes", "textbook_training_bytes"}


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "xfbench.benchmarks.cli", *args],
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[1],
        check=False,
    )


@pytest.mark.parametrize("model", sorted(CATALOG))
def test_predict_json_for_every_catalog_model(model: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["predict", model, "--json", "--batch", "2"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert JSON_KEYS <= set(data)
    assert MEMORY_KEYS <= set(data["memory"])
    assert data["batch_size"] == 2 and data["model"] == model
    assert isinstance(data["params"], int) and isinstance(data["forward_flops"], int)
    for layer in data["layers"]:
        assert {"name", "type", "output_shape", "params", "forward_flops"} <= set(layer)
    assert sum(layer["params"] for layer in data["layers"]) == data["params"]


def test_predict_table_shows_ledger(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["predict", "cnn3"]) == 0
    out = capsys.readouterr().out
    assert "903,400" in out and "12.61 MB" in out and "memory ledger: training" in out
    assert main(["predict", "cnn3", "--mib"]) == 0
    assert "MiB" in capsys.readouterr().out


def test_models_lists_sources(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    for name in CATALOG:
        assert name in out
    assert "HOML ch14 ex2" in out


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["predict", "resnet9000"], "'resnet9000'"),
        (["predict", "cnn3", "--batch", "0"], "0 is not positive"),
        (["predict", "cnn3", "--batch", "-3"], "-3 is not positive"),
        (["predict", "cnn3", "--batch", "many"], "'many' is not an integer"),
        (["predict", "cnn3", "--dtype", "int8"], "'int8'"),
        (["predict", "cnn3", "--framework", "jax"], "'jax'"),
        (["predict", "/nonexistent/model.json"], "cannot read spec file"),
        (["frobnicate"], "frobnicate"),
    ],
)
def test_bad_input_is_one_line_exit_2(args: list[str], needle: str) -> None:
    proc = run_cli(*args)
    assert proc.returncode == 2
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("xfbench: error:") and needle in lines[0]
    assert "Traceback" not in proc.stderr


def test_custom_json_and_yaml_specs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = {
        "name": "tiny",
        "input_shape": [1, 28, 28],
        "layers": [
            {"type": "Conv2D", "filters": 4, "kernel": 3, "padding": "same", "activation": "relu"},
            {"type": "MaxPool2D", "pool": 2},
            {"type": "Flatten"},
            {"type": "Dense", "units": 10},
        ],
    }
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps(spec))
    assert main(["predict", str(path), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    # conv: 4*1*9+4 = 40; dense: 4*14*14*10+10 = 7850
    assert data["params"] == 40 + 7850
    yaml_path = tmp_path / "tiny.yaml"
    yaml_path.write_text(
        "input_shape: [1, 28, 28]\nlayers:\n  - {type: Conv2D, filters: 4, kernel: 3, padding: same}\n"
        "  - {type: Flatten}\n  - {type: Dense, units: 10}\n"
    )
    assert main(["predict", str(yaml_path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["params"] == 40 + 4 * 28 * 28 * 10 + 10


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        ("{not json", "malformed spec file"),
        ('{"input_shape": [3, 8, 8], "layers": [{"type": "Conv2D", "filters": 2, "kernel": 9}]}', "layer 0"),
        ('{"input_shape": [3, 8, 8], "layers": []}', "layers"),
        ("[1, 2, 3]", "mapping"),
    ],
)
def test_malformed_spec_files(tmp_path: Path, content: str, needle: str) -> None:
    path = tmp_path / "bad.json"
    path.write_text(content)
    proc = run_cli("predict", str(path))
    assert proc.returncode == 2
    assert needle in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
