"""The framework-free report package: writer durability, schema versioning, merge and compare."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytest.importorskip("pandas")
pytest.importorskip("matplotlib")

from xfbench.reports.compare import compare, format_text
from xfbench.reports.env import fingerprint
from xfbench.reports.paths import IMPORT_ROOT
from xfbench.reports.schema import COLUMN_NAMES, HISTORY_COMMENT, SCHEMA_VERSION
from xfbench.reports.writer import RunWriter, SchemaError, merge_reports, read_report


def _row(**kw: object) -> dict[str, object]:
    row: dict[str, object] = {
        "backend": "torch",
        "device": "cpu",
        "model": "cnn3",
        "phase": "inference",
        "batch_size": 2,
        "dtype": "float32",
        "status": "ok",
    }
    row.update(kw)
    return row


def _write(tmp: Path, rows: list[dict[str, object]]) -> Path:
    with RunWriter(tmp) as w:
        for r in rows:
            w.write_row(r)
    return w.path


def test_fingerprint_columns() -> None:
    fp = fingerprint({"torch": "2.13.0"}, blas="mkl")
    assert set(fp) <= set(COLUMN_NAMES)
    assert fp["cpu_cores"] == os.cpu_count()
    assert fp["blas"] == "mkl" and fp["framework_version"] == "2.13.0"
    assert isinstance(fp["suite_commit"], str) and fp["suite_commit"]
    assert fingerprint({"torch": "2.13.0"}, blas="mkl") == fp


def test_file_layout_and_roundtrip(tmp_path: Path) -> None:
    path = _write(tmp_path, [_row(time_median_s=0.1, rounds=5, message='a, "quoted"\nmultiline # message')])
    lines = path.read_text(encoding="utf-8").splitlines()
    assert lines[0] == HISTORY_COMMENT
    assert lines[1] == ",".join(COLUMN_NAMES)
    df = read_report(path)
    assert len(df) == 1
    row = df.iloc[0]
    assert row["schema_version"] == SCHEMA_VERSION
    assert row["run_id"] == path.stem
    assert row["time_median_s"] == 0.1  # repr precision: exact round trip
    assert row["rounds"] == 5
    assert row["message"] == 'a, "quoted"\nmultiline # message'
    assert row["machine"] == fingerprint()["machine"]


def test_writer_names_unique_and_json_beside(tmp_path: Path) -> None:
    a, b = RunWriter(tmp_path), RunWriter(tmp_path)
    try:
        assert a.path != b.path and a.run_id != b.run_id
        assert a.path.name[:15] == b.path.name[:15]  # same second, still distinct
        assert a.json_path == a.path.with_suffix(".json")
        assert a.path.parent == tmp_path and a.path.suffix == ".csv"
    finally:
        a.close()
        b.close()


def test_unknown_column_and_status_rejected(tmp_path: Path) -> None:
    with RunWriter(tmp_path) as w:
        with pytest.raises(ValueError, match="bogus_column"):
            w.write_row(_row(bogus_column=1))
        with pytest.raises(ValueError, match="unknown status 'fine'"):
            w.write_row(_row(status="fine"))
        with pytest.raises(ValueError, match="unknown status"):
            w.write_row({k: v for k, v in _row().items() if k != "status"})
    assert read_report(w.path).empty


def test_oom_and_error_rows_roundtrip(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        [
            _row(status="oom", message="CUDA out of memory. Tried to allocate 2.00 GiB"),
            _row(status="error", phase="training", message="RuntimeError: shape mismatch (1, 2) vs (2, 1)"),
        ],
    )
    df = read_report(path)
    assert list(df["status"]) == ["oom", "error"]
    assert df["message"].iloc[0] == "CUDA out of memory. Tried to allocate 2.00 GiB"
    assert df["message"].iloc[1] == "RuntimeError: shape mismatch (1, 2) vs (2, 1)"
    assert df["time_median_s"].isna().all()


def _hand_written(path: Path, version: str | None) -> Path:
    cols = [c for c in COLUMN_NAMES if version is not None or c != "schema_version"]
    values = {c: "" for c in cols}
    values.update(machine="m", backend="torch", status="ok")
    if version is not None:
        values["schema_version"] = version
    path.write_text("# old\n" + ",".join(cols) + "\n" + ",".join(values[c] for c in cols) + "\n", encoding="utf-8")
    return path


def test_other_schema_version_refused(tmp_path: Path) -> None:
    old = _hand_written(tmp_path / "old.csv", "0")
    with pytest.raises(SchemaError) as err:
        read_report(old)
    msg = str(err.value)
    assert str(old) in msg and "schema version 0" in msg and f"reads version {SCHEMA_VERSION}" in msg
    assert "\n" not in msg

    none = _hand_written(tmp_path / "none.csv", None)
    with pytest.raises(SchemaError) as err:
        read_report(none)
    msg = str(err.value)
    assert str(none) in msg and "missing" in msg and f"reads version {SCHEMA_VERSION}" in msg

    good = _write(tmp_path, [_row(time_median_s=1.0)])
    with pytest.raises(SchemaError, match=r"old\.csv"):
        merge_reports([good, old], tmp_path / "merged.csv")


def test_missing_columns_refused(tmp_path: Path) -> None:
    path = tmp_path / "short.csv"
    path.write_text(f"schema_version,machine,status\n{SCHEMA_VERSION},m,ok\n", encoding="utf-8")
    with pytest.raises(SchemaError, match=r"missing column.*run_id"):
        read_report(path)


def test_kill_loses_nothing(tmp_path: Path) -> None:
    script = textwrap.dedent(
        f"""
        import os, signal, sys
        sys.path.insert(0, {str(IMPORT_ROOT)!r})
        from xfbench.reports.writer import RunWriter
        w = RunWriter({str(tmp_path)!r})
        w.write_row({{"backend": "torch", "model": "cnn3", "phase": "inference", "status": "ok",
                     "time_median_s": 0.25}})
        w.write_row({{"backend": "torch", "model": "vgg16", "phase": "inference", "status": "oom",
                     "message": "out of memory"}})
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=120)
    assert proc.returncode == -9, proc.stderr.decode()
    (path,) = tmp_path.glob("*.csv")
    df = read_report(path)
    assert list(df["model"]) == ["cnn3", "vgg16"]
    assert df["time_median_s"].iloc[0] == 0.25
    assert df["message"].iloc[1] == "out of memory"


def test_merge(tmp_path: Path) -> None:
    a = _write(tmp_path / "a", [_row(machine="zeta", model="vgg16"), _row(machine="zeta", model="alexnet")])
    b = _write(tmp_path / "b", [_row(machine="alpha", model="lenet")])
    out = tmp_path / "merged.csv"
    df = merge_reports([a, b], out)
    assert list(zip(df["machine"], df["model"])) == [("alpha", "lenet"), ("zeta", "alexnet"), ("zeta", "vgg16")]
    assert out.read_text(encoding="utf-8").splitlines()[0] == HISTORY_COMMENT
    again = read_report(out)
    assert list(again["model"]) == ["lenet", "alexnet", "vgg16"]


def _two_machines(tmp_path: Path) -> tuple[Path, Path]:
    a = _write(
        tmp_path / "a",
        [
            _row(machine="A", model="cnn3", time_median_s=1.0, mem_measured_bytes=1e6, mem_predicted_bytes=2e6),
            _row(machine="A", model="lenet", time_median_s=4.0),
            _row(machine="A", model="vgg16", status="skipped", message="no GPU"),
            _row(machine="A", model="alexnet", time_median_s=3.0),
        ],
    )
    b = _write(
        tmp_path / "b",
        [
            _row(machine="B", model="cnn3", time_median_s=2.0, mem_measured_bytes=3e6, mem_predicted_bytes=2.5e6),
            _row(machine="B", model="lenet", time_median_s=2.0),
            _row(machine="B", model="vgg16", time_median_s=9.0),
            _row(machine="B", model="alexnet", status="oom", message="out of memory", time_median_s=5.0),
        ],
    )
    return a, b


def test_compare_ratios_geomean_and_outputs(tmp_path: Path) -> None:
    a, b = _two_machines(tmp_path)
    res = compare([a, b], tmp_path / "cmp")
    assert res.baseline == "A" and res.labels == ("A", "B")
    ratios = dict(zip(res.ratios["model"], res.ratios["ratio"]))
    # skipped (vgg16 on A) and oom (alexnet on B) rows are not paired
    assert ratios == {"cnn3": 2.0 / 1.0, "lenet": 2.0 / 4.0}
    assert len(res.geomeans) == 1
    g = res.geomeans.iloc[0]
    assert (g["backend"], g["phase"], g["machine"], g["benchmarks"]) == ("torch", "inference", "B", 2)
    assert math.isclose(g["geomean_ratio"], math.sqrt(2.0 * 0.5))
    for p in (res.csv_path, res.md_path, *res.plot_paths):
        assert p.exists() and p.stat().st_size > 0
    assert {p.name for p in res.plot_paths} == {"time_by_model.png", "memory_measured_vs_predicted.png"}
    assert res.plot_paths[0].read_bytes()[:4] == b"\x89PNG"
    md = res.md_path.read_text(encoding="utf-8")
    assert "| torch | cpu | cnn3 | inference | 2 | float32 | A | B | 1 | 2 | 2 |" in md
    assert "| torch | inference | A | B | 2 | 1 |" in md
    text = format_text(res)
    assert "baseline: A" in text and "2.000" in text and "0.500" in text and "1.000" in text


def test_compare_same_host_uses_file_stem(tmp_path: Path) -> None:
    a = _write(tmp_path / "a", [_row(machine="h", time_median_s=1.0)])
    b = _write(tmp_path / "b", [_row(machine="h", time_median_s=3.0)])
    res = compare([a, b], tmp_path / "cmp")
    assert res.labels == (a.stem, b.stem)
    assert list(res.ratios["ratio"]) == [3.0]


def test_compare_refuses_too_little(tmp_path: Path) -> None:
    a, _ = _two_machines(tmp_path)
    with pytest.raises(ValueError, match="at least two report files"):
        compare([a], tmp_path / "cmp")
    only_skips = _write(tmp_path / "c", [_row(machine="C", model="cnn3", status="skipped")])
    with pytest.raises(ValueError, match="no configuration"):
        compare([a, only_skips], tmp_path / "cmp")
    old = _hand_written(tmp_path / "old.csv", "0")
    with pytest.raises(SchemaError, match="schema version 0"):
        compare([a, old], tmp_path / "cmp")


def test_compare_with_scaling_rows_of_the_same_model(tmp_path: Path) -> None:
    # A model row and two scaling rows share model/batch: the time plot must use the model row only.
    def rows(machine: str, t: float) -> list[dict[str, object]]:
        base = {"machine": machine, "backend": "torch", "device": "cpu", "model": "lenet", "batch_size": 8}
        return [
            {**base, "kind": "model", "phase": "training", "status": "ok", "time_median_s": t},
            {**base, "kind": "scaling", "phase": "training", "workers": 1, "status": "ok", "time_median_s": t},
            {**base, "kind": "scaling", "phase": "training", "workers": 2, "status": "ok", "time_median_s": t / 2},
        ]

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a = _write(tmp_path / "a", rows("A", 1.0))
    b = _write(tmp_path / "b", rows("B", 3.0))
    res = compare([a, b], tmp_path / "cmp")
    assert sorted(res.ratios["ratio"]) == [3.0, 3.0, 3.0]  # each configuration paired with its own twin
    assert all(p.exists() for p in res.plot_paths)
