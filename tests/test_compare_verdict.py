"""``xfbench compare`` leads with the verdict (issue 22): geometric means first, machines by alias with a legend,
calibration and noise rows only with ``--all``, ``--format md``, plots no wider than a laptop screen, and bad
input as one line with exit code 2. Expected ratios are hand arithmetic in the comments."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

pytest.importorskip("pandas")
pytest.importorskip("matplotlib")

from xfbench.benchmarks.cli import main
from xfbench.reports.compare import MAX_PLOT_PX, alias, compare, format_markdown, format_text, verdict
from xfbench.reports.writer import RunWriter

REFERENCE = Path(__file__).resolve().parents[1] / "reports" / "reference"
RUN1 = REFERENCE / "cpu-amd-epyc-2core-issue20-default-run1.csv"
RUN2 = REFERENCE / "cpu-amd-epyc-2core-issue20-default-run2.csv"


def _model(machine: str, backend: str, model: str, phase: str, t: float) -> dict[str, object]:
    return {
        "machine": machine,
        "kind": "model",
        "backend": backend,
        "device": "cpu",
        "model": model,
        "phase": phase,
        "batch_size": 2,
        "dtype": "float32",
        "status": "ok",
        "time_median_s": t,
        "cpu_model": f"Test CPU {machine}",
        "cpu_cores": 8 if machine == "fast" else 2,
    }


def _calibration(machine: str, shape: str, t: float, kind: str = "calibration") -> dict[str, object]:
    return {
        "machine": machine,
        "kind": kind,
        "backend": "torch",
        "device": "cpu",
        "shape": shape,
        "status": "ok",
        "time_median_s": t,
    }


def _write(directory: Path, rows: list[dict[str, object]]) -> Path:
    with RunWriter(directory) as w:
        for r in rows:
            w.write_row(r)
    return w.path


def _two_files(tmp_path: Path) -> tuple[Path, Path]:
    """Reference "slow": torch inference cnn3 1 s, lenet 1 s; tensorflow training cnn3 4 s, lenet 4 s.
    Other "fast": torch inference 2 s, 8 s (ratios 2, 8: geometric mean sqrt(16) = 4, 4x slower);
    tensorflow training 1 s, 4 s (ratios 0.25, 1: geometric mean sqrt(0.25) = 0.5, 2x faster).
    Calibration gemm:1x16x16 1 s -> 3 s, and a noise probe 1 s -> 1 s: shown only with --all."""
    a = _write(
        tmp_path / "a",
        [
            _model("slow", "torch", "cnn3", "inference", 1.0),
            _model("slow", "torch", "lenet", "inference", 1.0),
            _model("slow", "tensorflow", "cnn3", "training", 4.0),
            _model("slow", "tensorflow", "lenet", "training", 4.0),
            _calibration("slow", "gemm:1x16x16", 1.0),
            _calibration("slow", "noise:start", 1.0, kind="noise"),
        ],
    )
    b = _write(
        tmp_path / "b",
        [
            _model("fast", "torch", "cnn3", "inference", 2.0),
            _model("fast", "torch", "lenet", "inference", 8.0),
            _model("fast", "tensorflow", "cnn3", "training", 1.0),
            _model("fast", "tensorflow", "lenet", "training", 4.0),
            _calibration("fast", "gemm:1x16x16", 3.0),
            _calibration("fast", "noise:start", 1.0, kind="noise"),
        ],
    )
    return a, b


def test_verdict_and_alias_by_hand() -> None:
    assert verdict(2.0) == "2.00x slower"
    assert verdict(0.25) == "4.00x faster"
    assert verdict(1.004) == "same"
    assert verdict(4.0, "B", "A") == "B 4.00x slower than A"
    assert verdict(0.5, "B", "A") == "B 2.00x faster than A"
    assert [alias(i) for i in (0, 1, 25, 26, 27)] == ["A", "B", "Z", "AA", "AB"]


def test_geometric_means_by_hand_lead_the_text(tmp_path: Path) -> None:
    a, b = _two_files(tmp_path)
    res = compare([a, b], tmp_path / "cmp")
    g = res.geomeans.set_index(["kind", "backend", "phase"])
    assert g.loc[("model", "torch", "inference"), "geomean_ratio"] == pytest.approx(4.0)
    assert g.loc[("model", "torch", "inference"), "benchmarks"] == 2
    assert g.loc[("model", "tensorflow", "training"), "geomean_ratio"] == pytest.approx(0.5)
    assert g.loc[("calibration", "torch", ""), "geomean_ratio"] == pytest.approx(3.0)

    lines = format_text(res).splitlines()
    first = "\n".join(lines[:15])
    assert "B 4.00x slower than A" in first and "B 2.00x faster than A" in first
    geo = next(i for i, line in enumerate(lines) if "B 4.00x slower than A" in line)
    model_table = lines.index("model rows:")
    assert geo < model_table  # the verdict before any row
    row = next(line.split() for line in lines if line.startswith("B ") and "lenet" in line and "torch" in line)
    assert "8.000" in row and row[-2:] == ["8.00x", "slower"]  # 8 s / 1 s


def test_machines_by_alias_with_a_legend_never_by_file_stem(tmp_path: Path) -> None:
    a, b = _two_files(tmp_path)
    res = compare([a, b], tmp_path / "cmp")
    text = format_text(res)
    lines = text.splitlines()
    assert lines[1] == f"A = {a}: host slow, Test CPU slow, 2 cores (reference)"
    assert lines[2] == f"B = {b}: host fast, Test CPU fast, 8 cores"
    # The file stem appears in the legend only (and the "written:" line names the output files, not inputs).
    assert [line for line in lines if a.stem in line] == [lines[1]]
    assert [line for line in lines if b.stem in line] == [lines[2]]


def test_calibration_and_noise_rows_only_with_all(tmp_path: Path) -> None:
    a, b = _two_files(tmp_path)
    res = compare([a, b], tmp_path / "cmp")
    text = format_text(res)
    assert "gemm:" not in text and "noise:" not in text and "calibration  torch" not in text
    assert "(2 calibration and noise pairs not shown; --all shows them)" in text
    assert "gemm:" not in res.md_path.read_text(encoding="utf-8")
    every = format_text(res, include_all=True)
    assert "gemm:1x16x16" in every and "noise:start" in every
    assert "B 3.00x slower than A" in every  # the calibration geometric mean: 3 s / 1 s
    assert "not shown" not in every
    assert "gemm:1x16x16" in compare([a, b], tmp_path / "cmp2", include_all=True).md_path.read_text(encoding="utf-8")
    # comparison.csv is the record: every pair, calibration included
    assert "gemm:1x16x16" in res.csv_path.read_text(encoding="utf-8")


def test_format_md_prints_markdown_tables(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a, b = _two_files(tmp_path)
    assert main(["compare", str(a), str(b), "--out", str(tmp_path / "cmp"), "--format", "md"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("# xfbench comparison\n")
    assert "| alias | file | machine |" in out
    assert f"| A (reference) | {a} | host slow, Test CPU slow, 2 cores |" in out
    assert "| B | model | torch | inference | 2 | 4.000 | B 4.00x slower than A |" in out
    assert "| B | model | tensorflow | training | 2 | 0.500 | B 2.00x faster than A |" in out
    assert "gemm:" not in out
    assert out == format_markdown(compare([a, b], tmp_path / "cmp"))


def _png_size(path: Path) -> tuple[int, int]:
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", head[16:24])
    return int(width), int(height)


def test_plots_fit_a_laptop_screen_split_by_backend(tmp_path: Path) -> None:
    # 60 models in one phase on two machines: one strip would be thousands of pixels wide.
    models = [f"m{i:02d}" for i in range(60)]
    a = _write(
        tmp_path / "a",
        [_model("slow", "torch", m, "inference", 1.0) for m in models]
        + [_model("slow", "tensorflow", "cnn3", "training", 1.0)],
    )
    b = _write(
        tmp_path / "b",
        [_model("fast", "torch", m, "inference", 0.5) for m in models]
        + [_model("fast", "tensorflow", "cnn3", "training", 0.5)],
    )
    res = compare([a, b], tmp_path / "cmp")
    names = {p.name for p in res.plot_paths}
    assert names == {"time_by_model_torch.png", "time_by_model_tensorflow.png", "memory_measured_vs_predicted.png"}
    for path in res.plot_paths:
        width, _ = _png_size(path)
        assert width <= MAX_PLOT_PX, (path.name, width)
    _, torch_h = _png_size(tmp_path / "cmp" / "time_by_model_torch.png")
    _, tf_h = _png_size(tmp_path / "cmp" / "time_by_model_tensorflow.png")
    assert torch_h > 2 * tf_h  # the 60 models are split over several panels, stacked


def test_reference_csvs_lead_with_the_geometric_means(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    if not (RUN1.is_file() and RUN2.is_file()):
        pytest.skip("reference CSVs absent (installed package, not a source checkout)")
    assert main(["compare", str(RUN1), str(RUN2), "--out", str(tmp_path / "cmp")]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    first = lines[:15]
    assert any(line.startswith("geometric mean") for line in first)
    model_geomeans = [line for line in first if line.startswith("B ") and " model " in line]
    assert len(model_geomeans) == 6  # 3 frameworks x 2 phases
    assert all(("faster than A" in line or "slower than A" in line or "same as A" in line) for line in model_geomeans)
    assert "gemm:" not in out and "noise:" not in out
    assert capsys.readouterr().err == ""
    assert main(["compare", str(RUN1), str(RUN2), "--out", str(tmp_path / "cmp"), "--all"]) == 0
    assert "gemm:1x16x16" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["--format", "html"], ["'html'", "text", "md"]),
        (["--out"], ["--out"]),
    ],
)
def test_bad_options_are_one_line_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], needles: list[str]
) -> None:
    a, b = _two_files(tmp_path)
    assert main(["compare", str(a), str(b), *args]) == 2
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("xfbench: error: "), captured.err
    assert all(n in err[0] for n in needles), err[0]
    assert "Traceback" not in captured.err and captured.out == ""


def test_one_file_or_a_missing_file_is_one_line_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a, _ = _two_files(tmp_path)
    assert main(["compare", str(a), "--out", str(tmp_path / "cmp")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["xfbench: error: compare needs at least two report files (one per machine); got 1"]
    missing = tmp_path / "nowhere.csv"
    assert main(["compare", str(a), str(missing), "--out", str(tmp_path / "cmp")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(missing) in err[0] and "no such file" in err[0]
