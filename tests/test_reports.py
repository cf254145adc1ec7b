"""The framework-free report package: writer durability, schema versioning, merge and compare."""

from __future__ import annotations

import csv
import math
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytest.importorskip("pandas")
pytest.importorskip("matplotlib")

from xfbench.reports.compare import compare, format_text
from xfbench.reports.env import ENV_COLUMNS, fingerprint
from xfbench.reports.paths import IMPORT_ROOT, subprocess_env
from xfbench.reports.schema import (
    ADDED_IN,
    COLUMN,
    COLUMN_NAMES,
    COLUMNS,
    CONFIG_KEY,
    HISTORY_COMMENT,
    OPTIONAL_IN,
    ROW_KINDS,
    SCHEMA_VERSION,
    WRITER_COLUMNS,
    columns_of_version,
    markdown,
    markdown_table,
)
from xfbench.reports.writer import (
    FLOAT_COLUMNS,
    INT_COLUMNS,
    ReportError,
    RunWriter,
    SchemaError,
    merge_reports,
    read_report,
)


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
    assert lines[0] == ",".join(COLUMN_NAMES)  # plain CSV: the header first, no comment line
    df = read_report(path)
    assert len(df) == 1
    row = df.iloc[0]
    assert row["schema_version"] == SCHEMA_VERSION
    assert row["run_id"] == path.stem
    assert row["time_median_s"] == 0.1  # repr precision: exact round trip
    assert row["rounds"] == 5
    assert row["message"] == 'a, "quoted"\nmultiline # message'
    assert row["machine"] == fingerprint()["machine"]


# ------------------------------------------------------------ plain CSV: every tool opens it with its defaults
def test_written_and_merged_reports_open_in_pandas_and_dictreader_with_defaults(tmp_path: Path) -> None:
    import pandas as pd

    run = _write(tmp_path / "run", [_row(time_median_s=0.25, message="a # b"), _row(model="lenet", rounds=3)])
    merged = tmp_path / "merged.csv"
    merge_reports([run], merged)
    for path in (run, merged):
        df = pd.read_csv(path)  # no comment=, no skiprows=: the header is the first line
        assert list(df.columns) == list(COLUMN_NAMES)
        assert len(df) == 2
        assert set(df["schema_version"]) == {SCHEMA_VERSION}
        assert sorted(df["model"]) == ["cnn3", "lenet"]
        assert df.loc[df["model"] == "cnn3", "time_median_s"].iloc[0] == 0.25
        with open(path, encoding="utf-8", newline="") as fh:
            reader = csv.DictReader(fh)
            rows = list(reader)
        assert reader.fieldnames == list(COLUMN_NAMES)
        assert [r["schema_version"] for r in rows] == [str(SCHEMA_VERSION)] * 2
        assert {r["message"] for r in rows} == {"a # b", ""}
        assert not path.read_text(encoding="utf-8").startswith("#")


def test_a_file_of_an_older_release_with_the_history_comment_still_reads(tmp_path: Path) -> None:
    plain = _write(tmp_path / "run", [_row(time_median_s=0.5)])
    old = tmp_path / "old.csv"
    old.write_text(
        HISTORY_COMMENT + "\n# a second comment line\n" + plain.read_text(encoding="utf-8"), encoding="utf-8"
    )
    df = read_report(old)
    assert list(df.columns) == list(COLUMN_NAMES)
    assert len(df) == 1 and df["time_median_s"].iloc[0] == 0.5 and df["model"].iloc[0] == "cnn3"
    # merging it writes plain CSV
    merge_reports([old], tmp_path / "merged.csv")
    assert (tmp_path / "merged.csv").read_text(encoding="utf-8").splitlines()[0] == ",".join(COLUMN_NAMES)


def test_committed_reference_reports_load_through_read_report() -> None:
    files = sorted((Path(__file__).resolve().parents[1] / "reports" / "reference").glob("*.csv"))
    if not files:
        pytest.skip("no reference CSVs (installed package, not a source checkout)")
    # Those written before issue 22 begin with the '#' history line that read_report skips; later ones are plain
    # CSV with the header first. Both kinds are committed, and both must read.
    firsts = {path.read_text(encoding="utf-8").split("\n", 1)[0][:10] for path in files}
    assert any(f.startswith("# xfbench") for f in firsts) and any(f.startswith("schema_ver") for f in firsts)
    for path in files:
        df = read_report(path)
        assert list(df.columns) == list(COLUMN_NAMES), path.name
        assert len(df) > 0, path.name


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
    assert out.read_text(encoding="utf-8").splitlines()[0] == ",".join(COLUMN_NAMES)
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
    assert {p.name for p in res.plot_paths} == {"time_by_model_torch.png", "memory_measured_vs_predicted.png"}
    assert res.plot_paths[0].read_bytes()[:4] == b"\x89PNG"
    md = res.md_path.read_text(encoding="utf-8")
    # machine, backend, device, model, phase, batch, dtype, A s, time s, ratio, verdict, predicted, error, basis
    assert "| B | torch | cpu | cnn3 | inference | 2 | float32 | 1 | 2 | 2.000 | 2.00x slower |  |  |  |" in md
    # sqrt(2.0 * 0.5) = 1: the geometric mean of a 2x slower and a 2x faster row is "same"
    assert "| B | model | torch | inference | 2 | 1.000 | B same as A |" in md
    text = format_text(res)
    assert "reference A" in text and "2.000" in text and "0.500" in text and "1.000" in text


def test_compare_same_host_names_each_file_by_alias_and_legend(tmp_path: Path) -> None:
    a = _write(tmp_path / "a", [_row(machine="h", time_median_s=1.0)])
    b = _write(tmp_path / "b", [_row(machine="h", time_median_s=3.0)])
    res = compare([a, b], tmp_path / "cmp")
    assert res.labels == ("A", "B")
    assert list(res.ratios["ratio"]) == [3.0]
    legend = [m.legend(res.baseline) for m in res.machines]
    assert legend[0].startswith(f"A = {a}: host h, ") and legend[0].endswith("(reference)")
    assert legend[1].startswith(f"B = {b}: host h, ")


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


# ------------------------------------------------------------------- configuration key: what never pairs
def _train(machine: str, t: float, **kw: object) -> dict[str, object]:
    return _row(machine=machine, model="cnn3", phase="training", batch_size=8, time_median_s=t, **kw)


def test_compare_never_pairs_sgd_with_adam(tmp_path: Path) -> None:
    # Same model, phase and batch; A: sgd 1.0 s, adam 3.0 s; B: sgd 2.0 s, adam 1.5 s.
    a = _write(tmp_path / "a", [_train("A", 1.0, optimizer="sgd"), _train("A", 3.0, optimizer="adam")])
    b = _write(tmp_path / "b", [_train("B", 2.0, optimizer="sgd"), _train("B", 1.5, optimizer="adam")])
    res = compare([a, b], tmp_path / "cmp")
    # By hand: sgd 2.0 / 1.0 = 2.0, adam 1.5 / 3.0 = 0.5 (a cross pair would give 2.0 / 3.0 or 1.5 / 1.0).
    assert sorted(zip(res.ratios["optimizer"], res.ratios["ratio"])) == [("adam", 0.5), ("sgd", 2.0)]
    assert list(res.geomeans["benchmarks"]) == [2]
    assert math.isclose(res.geomeans["geomean_ratio"].iloc[0], math.sqrt(2.0 * 0.5))

    # An sgd row on one machine and an adam row on the other: nothing to pair.
    only_sgd = _write(tmp_path / "c", [_train("C", 1.0, optimizer="sgd")])
    only_adam = _write(tmp_path / "d", [_train("D", 1.0, optimizer="adam")])
    with pytest.raises(ValueError, match="no configuration"):
        compare([only_sgd, only_adam], tmp_path / "cmp2")


def test_compare_text_tells_the_optimizers_apart(tmp_path: Path) -> None:
    a = _write(tmp_path / "a", [_train("A", 1.0, optimizer="sgd"), _train("A", 3.0, optimizer="adam")])
    b = _write(tmp_path / "b", [_train("B", 2.0, optimizer="sgd"), _train("B", 1.5, optimizer="adam")])
    lines = [line.split() for line in format_text(compare([a, b], tmp_path / "cmp")).splitlines()]
    assert any("sgd" in words and "2.000" in words and words[-2:] == ["2.00x", "slower"] for words in lines)
    assert any("adam" in words and "0.500" in words and words[-2:] == ["2.00x", "faster"] for words in lines)


@pytest.mark.parametrize(
    ("column", "first", "second"),
    [("scaling_mode", "strong", "weak"), ("tf32", "on", "off"), ("transfers", "included", "excluded")],
)
def test_compare_never_pairs_other_configuration_columns(tmp_path: Path, column: str, first: str, second: str) -> None:
    a = _write(tmp_path / "a", [_train("A", 1.0, workers=2, **{column: first})])
    b = _write(tmp_path / "b", [_train("B", 1.0, workers=2, **{column: second})])
    with pytest.raises(ValueError, match="no configuration"):
        compare([a, b], tmp_path / "cmp")
    same = _write(tmp_path / "c", [_train("C", 4.0, workers=2, **{column: first})])
    assert list(compare([a, same], tmp_path / "cmp").ratios["ratio"]) == [4.0]


def test_config_key_columns_exist() -> None:
    assert set(CONFIG_KEY) <= set(COLUMN_NAMES)
    assert len(set(CONFIG_KEY)) == len(CONFIG_KEY)


# -------------------------------------------------------------------------- reading older schema versions
def _version2_file(path: Path, rows: list[dict[str, str]]) -> Path:
    """A version-2 file written by hand: the version-3 columns less ``tf32`` (the one column 3 added)."""
    cols = [c for c in COLUMN_NAMES if c != "tf32"]
    lines = ["# xfbench benchmark report; schema history: 1 = first version, 2 = matmul/scaling/exercise rows"]
    lines.append(",".join(cols))
    for r in rows:
        values = {c: "" for c in cols}
        values.update(schema_version="2", run_id=path.stem, timestamp="2024-01-01T00:00:00.000+00:00")
        values.update(r)
        lines.append(",".join(values[c] for c in cols))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_version_2_files_are_read_with_tf32_blank(tmp_path: Path) -> None:
    base = {
        "backend": "torch",
        "device": "cpu",
        "model": "cnn3",
        "phase": "inference",
        "batch_size": "2",
        "dtype": "float32",
    }
    old = _version2_file(tmp_path / "old.csv", [{**base, "machine": "A", "status": "ok", "time_median_s": "2.0"}])
    df = read_report(old)
    assert list(df.columns) == list(COLUMN_NAMES)
    assert df["schema_version"].iloc[0] == 2 and df["tf32"].iloc[0] == ""
    assert df["time_median_s"].iloc[0] == 2.0

    new = _write(tmp_path / "new", [_row(machine="B", time_median_s=3.0)])
    merged = merge_reports([old, new], tmp_path / "merged.csv")
    assert sorted(zip(merged["machine"], merged["schema_version"])) == [("A", 2), ("B", SCHEMA_VERSION)]
    assert list(read_report(tmp_path / "merged.csv")["tf32"]) == ["", ""]
    assert list(compare([old, new], tmp_path / "cmp").ratios["ratio"]) == [3.0 / 2.0]


def test_version_2_file_missing_a_version_2_column_refused(tmp_path: Path) -> None:
    path = tmp_path / "short.csv"
    path.write_text("schema_version,machine,status\n2,m,ok\n", encoding="utf-8")
    with pytest.raises(SchemaError, match=r"missing column.*run_id"):
        read_report(path)


# --------------------------------------------------------------------------- the docs' generated table
REPORTS_DOC = Path(__file__).resolve().parents[1] / "docs" / "reports.md"


def _reports_section() -> str:
    if not REPORTS_DOC.is_file():
        pytest.skip(f"{REPORTS_DOC} is absent (installed package, not a source checkout)")
    return REPORTS_DOC.read_text(encoding="utf-8")


def test_readme_table_is_the_generated_one() -> None:
    section = _reports_section()
    lines = section.splitlines()
    first = lines.index("| column | type | key | since | row kinds | meaning |")
    table = []
    for line in lines[first:]:
        if not line.startswith("|"):
            break
        table.append(line)
    assert "\n".join(table) == markdown_table()
    assert markdown() in section
    stated = re.findall(r"The CSV schema \(version (\d+);", section)
    assert stated == [str(SCHEMA_VERSION)]


def test_readme_names_the_whole_configuration_key() -> None:
    section = _reports_section()
    paragraph = section[section.index("`xfbench compare A.csv B.csv ...` pairs") :].split("\n\n")[0]
    assert [c for c in CONFIG_KEY if f"`{c}`" not in paragraph] == []


def test_markdown_table_rows() -> None:
    lines = markdown_table().splitlines()
    assert lines[:2] == ["| column | type | key | since | row kinds | meaning |", "|---|---|---|---|---|---|"]
    assert len(lines) == 2 + len(COLUMNS)
    dtype_at = lines.index("| `dtype` | str | yes | 1 | all | float32, float16 or bfloat16 |")
    assert lines[dtype_at + 1] == (
        "| `tf32` | str | yes | 3 | model, matmul, transfer, logging, concurrency, scaling, allreduce, exercise "
        "| TF32 matmul policy of the run on GPUs: on, off; blank on CPU |"
    )
    assert "| `run_id` | str |  | 1 | all; set by the writer | unique id of the run (one file per run) |" in lines
    assert "| `cpu_cores` | int |  | 1 | all; the machine's fingerprint | logical CPU cores |" in lines
    assert (
        "| `mem_repeats` | int |  | 3 (optional in 3) | model | fresh processes each memory figure is the median of |"
        in lines
    )


def test_schema_module_prints_markdown_and_rejects_bad_arguments() -> None:
    cmd = [sys.executable, "-m", "xfbench.reports.schema"]
    ok = subprocess.run([*cmd, "--markdown"], capture_output=True, text=True, env=subprocess_env(), timeout=120)
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout == markdown() + "\n"
    bad = subprocess.run([*cmd, "--html"], capture_output=True, text=True, env=subprocess_env(), timeout=120)
    assert bad.returncode == 2
    assert bad.stderr.splitlines() == ["xfbench: error: unknown argument '--html'; allowed: --markdown"]
    assert bad.stdout == ""


# ------------------------------------------------------------- the schema as one table, and what derives from it
# Written by hand from the row builders (grep '"kind"' in benchmarks/ and analytics/steptime.py): model
# (bench_models.py, workload.base_row), matmul, transfer, logging, concurrency, exercise (matmul.py,
# bench_matmul.py, exercises.csv_row), scaling and allreduce (scaling.py), calibration (steptime.peaks_to_rows),
# noise (benchmarks/harness/noise.py probe).
KINDS_WRITTEN = (
    "model",
    "matmul",
    "transfer",
    "logging",
    "concurrency",
    "scaling",
    "allreduce",
    "exercise",
    "calibration",
    "noise",
)

# Version 3's header, spelled out: the CSV's column order must not move (files stay byte-identical).
HEADER_V3 = (
    "schema_version,run_id,timestamp,machine,kind,backend,framework_version,device,device_name,model,phase,"
    "batch_size,dtype,tf32,optimizer,status,message,time_median_s,time_iqr_s,time_mean_s,time_min_s,rounds,"
    "throughput_samples_per_s,params_counted,params_predicted,flops_counter,flops_counted,flops_predicted_counter,"
    "flops_rel_error,flops_unsupported,flops_predicted,achieved_flops_per_s,mem_method,mem_measured_bytes,"
    "mem_predicted_bytes,mem_rel_error,mem_baseline_bytes,mem_second_step_bytes,mem_allocator_peak_bytes,"
    "mem_nvml_bytes,mem_textbook_bytes,mem_tensor_measured_bytes,mem_tensor_predicted_bytes,mem_tensor_breakdown,"
    "mem_repeats,mem_spread,shape,transfers,gflops_per_s,peak_fraction,time_predicted_s,time_rel_error,"
    "prediction_basis,workers,scaling_mode,speedup,speedup_predicted,efficiency,efficiency_predicted,cpu_model,"
    "cpu_cores,ram_bytes,gpu_name,gpu_memory_bytes,gpu_driver,os,python,blas,suite_commit"
)
# Version 4 (issue 20) put its columns beside the ones they qualify: the time interval after time_median_s, the
# noise verdict and threads after time_rel_error, the affinity and ISA caps after cpu_cores.
HEADER_V4 = (
    HEADER_V3.replace("time_median_s,", "time_median_s,time_lo_s,time_hi_s,time_processes,")
    .replace("time_rel_error,", "time_rel_error,time_within_noise,threads,")
    .replace("cpu_cores,", "cpu_cores,cpu_affinity,cpu_isa_cap,")
)
# Version 5 (issue 23): where the data-parallel workers ran, after workers.
HEADER_V5 = HEADER_V4.replace(",workers,", ",workers,nodes,workers_per_node,")
VERSION5 = ["nodes", "workers_per_node"]
# The typed columns as the writer listed them before the table carried the types.
INTS = {
    "schema_version",
    "batch_size",
    "rounds",
    "params_counted",
    "params_predicted",
    "cpu_cores",
    "ram_bytes",
    "gpu_memory_bytes",
    "workers",
    "mem_repeats",
    "time_processes",  # version 4
    "threads",  # version 4
    "nodes",  # version 5
    "workers_per_node",  # version 5
}
FLOATS = {
    "time_median_s",
    "time_lo_s",  # version 4
    "time_hi_s",  # version 4
    "time_iqr_s",
    "time_mean_s",
    "time_min_s",
    "throughput_samples_per_s",
    "flops_counted",
    "flops_predicted_counter",
    "flops_rel_error",
    "flops_predicted",
    "achieved_flops_per_s",
    "mem_measured_bytes",
    "mem_predicted_bytes",
    "mem_rel_error",
    "mem_baseline_bytes",
    "mem_second_step_bytes",
    "mem_allocator_peak_bytes",
    "mem_nvml_bytes",
    "mem_textbook_bytes",
    "mem_tensor_measured_bytes",
    "mem_tensor_predicted_bytes",
    "mem_spread",
    "gflops_per_s",
    "peak_fraction",
    "time_predicted_s",
    "time_rel_error",
    "speedup",
    "speedup_predicted",
    "efficiency",
    "efficiency_predicted",
}


def test_every_row_kind_in_the_table_is_one_the_code_writes() -> None:
    assert tuple(ROW_KINDS) == KINDS_WRITTEN
    # Each kind fills some column beyond those of every row, and the table names no other kind.
    named = {k for c in COLUMNS if c.kinds != KINDS_WRITTEN for k in c.kinds}
    assert named == set(KINDS_WRITTEN)
    assert [c.name for c in COLUMNS if not c.kinds] == []
    from xfbench.analytics.steptime import CALIBRATION_KIND

    assert CALIBRATION_KIND in KINDS_WRITTEN


def test_every_column_the_writer_types_is_in_the_table() -> None:
    assert set(INT_COLUMNS) | set(FLOAT_COLUMNS) <= set(COLUMN_NAMES)
    assert set(INT_COLUMNS) == INTS and set(FLOAT_COLUMNS) == FLOATS
    assert {c.name for c in COLUMNS if c.type == "str"} == set(COLUMN_NAMES) - INTS - FLOATS
    assert {c.type for c in COLUMNS} == {"str", "int", "float"}


def test_header_and_keys_derived_from_the_table_are_unchanged() -> None:
    assert HEADER_V5 != HEADER_V4
    assert ",".join(COLUMN_NAMES) == HEADER_V5 and len(COLUMN_NAMES) == len(set(COLUMN_NAMES)) == 69 + 7 + 2
    assert list(COLUMN) == list(COLUMN_NAMES)
    assert CONFIG_KEY == (
        "kind",
        "backend",
        "device",
        "model",
        "phase",
        "batch_size",
        "dtype",
        "tf32",
        "optimizer",
        "shape",
        "transfers",
        "workers",
        "nodes",
        "workers_per_node",
        "scaling_mode",
    )
    assert WRITER_COLUMNS == ("schema_version", "run_id", "timestamp")
    assert ENV_COLUMNS == (
        "machine",
        "cpu_model",
        "cpu_cores",
        "cpu_affinity",
        "cpu_isa_cap",
        "ram_bytes",
        "gpu_name",
        "gpu_memory_bytes",
        "gpu_driver",
        "os",
        "python",
        "blas",
        "suite_commit",
    )
    memory3 = ["mem_tensor_measured_bytes", "mem_tensor_predicted_bytes", "mem_tensor_breakdown"]
    memory3 += ["mem_repeats", "mem_spread"]
    version4 = ["time_lo_s", "time_hi_s", "time_processes", "time_within_noise", "threads"]
    version4 += ["cpu_affinity", "cpu_isa_cap"]
    assert ADDED_IN == {"tf32": 3, **{c: 3 for c in memory3}, **{c: 4 for c in version4}, **{c: 5 for c in VERSION5}}
    assert OPTIONAL_IN == {c: 3 for c in memory3}
    assert columns_of_version(5) == COLUMN_NAMES
    assert columns_of_version(4) == tuple(c for c in COLUMN_NAMES if c not in VERSION5)
    assert columns_of_version(3) == tuple(
        c for c in COLUMN_NAMES if c not in memory3 and c not in version4 and c not in VERSION5
    )
    assert columns_of_version(2) == tuple(
        c for c in COLUMN_NAMES if c not in memory3 and c not in version4 and c not in VERSION5 and c != "tf32"
    )


def test_fingerprint_fills_exactly_the_env_columns() -> None:
    assert set(fingerprint()) == set(ENV_COLUMNS)
    assert set(fingerprint({"torch": "2.13.0"})) == {*ENV_COLUMNS, "framework_version"}


def test_cells_are_formatted_as_before(tmp_path: Path) -> None:
    row = _row(
        kind="model",
        machine="m",
        batch_size=32,
        time_median_s=0.1,
        time_min_s=1e-07,
        time_mean_s=math.nan,
        mem_measured_bytes=10**18,
        mem_spread=2.5,
        rounds=None,
        message="a, b",
        tf32="",
    )
    path = _write(tmp_path, [row])
    lines = path.read_text(encoding="utf-8").splitlines()
    assert lines[0] == HEADER_V5
    cells = dict(zip(HEADER_V5.split(","), next(csv.reader([lines[1]]))))
    expected = {
        "machine": "m",
        "kind": "model",
        "batch_size": "32",
        "time_median_s": "0.1",
        "time_min_s": "1e-07",
        "time_mean_s": "",
        "mem_measured_bytes": "1000000000000000000",
        "mem_spread": "2.5",
        "rounds": "",
        "message": "a, b",
        "tf32": "",
        "schema_version": "5",
    }
    assert {c: cells[c] for c in expected} == expected
    assert '"a, b"' in lines[1]  # quoted, as csv does


@pytest.mark.parametrize(
    ("column", "value", "kind"),
    [("batch_size", "two", "an integer"), ("batch_size", 2.5, "an integer"), ("time_median_s", "fast", "a number")],
)
def test_write_row_refuses_a_cell_not_of_its_column_type(tmp_path: Path, column: str, value: object, kind: str) -> None:
    with RunWriter(tmp_path) as w:
        with pytest.raises(ValueError) as err:
            w.write_row(_row(**{column: value}))
        w.write_row(_row(batch_size=2.0, time_median_s="0.5"))  # whole floats and numeric text are numbers
    assert str(err.value) == f"column {column} = {str(value)!r} is not {kind}; allowed: {kind} or blank"
    df = read_report(w.path)
    assert len(df) == 1 and df["batch_size"].iloc[0] == 2 and df["time_median_s"].iloc[0] == 0.5


def test_read_report_types_each_column_as_the_table_says(tmp_path: Path) -> None:
    df = read_report(_write(tmp_path, [_row(rounds=5, time_median_s=0.25, workers=2)]))
    assert {c for c in df.columns if str(df[c].dtype) == "Int64"} == INTS
    assert {c for c in df.columns if str(df[c].dtype) == "float64"} == FLOATS
    assert df["rounds"].iloc[0] == 5 and df["workers"].iloc[0] == 2 and df["time_median_s"].iloc[0] == 0.25


def test_read_report_refuses_a_non_number_with_its_line(tmp_path: Path) -> None:
    path = _write(tmp_path, [_row(time_median_s=0.5), _row(time_median_s=0.7)])
    lines = path.read_text(encoding="utf-8").splitlines()
    lines[2] = lines[2].replace(",0.7,", ",slow,")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(ReportError) as err:
        read_report(path)
    assert str(err.value) == (
        f"{path}: line 3: column time_median_s = 'slow' is not a number; allowed: a number or blank"
    )
    # A file of an older release (the history comment first): the line number still counts the comment.
    path.write_text(HISTORY_COMMENT + "\n" + "\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(ReportError, match=rf"^{re.escape(str(path))}: line 4: column time_median_s = 'slow'"):
        read_report(path)


REFERENCE = Path(__file__).resolve().parents[1] / "reports" / "reference"


def test_committed_reports_fill_only_the_columns_the_table_gives_their_kind() -> None:
    files = sorted(REFERENCE.glob("*.csv"))
    if not files:
        pytest.skip(f"no reference CSVs under {REFERENCE} (installed package, not a source checkout)")
    seen: set[str] = set()
    for path in files:
        text = [line for line in path.read_text(encoding="utf-8").splitlines(keepends=True) if line[:1] != "#"]
        for row in csv.DictReader(text):
            kind = row["kind"]
            seen.add(kind)
            stray = [c for c, v in row.items() if v.strip() and kind not in COLUMN[c].kinds]
            assert stray == [], f"{path.name}: a {kind} row fills {stray}"
    assert seen <= set(KINDS_WRITTEN) and {"model", "matmul", "scaling", "allreduce", "exercise"} <= seen


def test_compare_shows_the_other_machines_time_prediction(tmp_path: Path) -> None:
    """Issue 11: compare carries each paired row's own prediction (B's), not the baseline's."""
    a = _write(tmp_path / "a", [_row(machine="A", model="cnn3", time_median_s=1.0, time_predicted_s=0.5)])
    b = _write(
        tmp_path / "b",
        [
            _row(
                machine="B",
                model="cnn3",
                time_median_s=2.0,
                time_predicted_s=1.5,
                time_rel_error=(1.5 - 2.0) / 2.0,
                prediction_basis="measured-peaks",
            )
        ],
    )
    res = compare([a, b], tmp_path / "cmp")
    row = res.ratios.iloc[0]
    assert (row["time_s"], row["time_predicted_s"], row["time_rel_error"]) == (2.0, 1.5, -0.25)
    assert row["prediction_basis"] == "measured-peaks"
    md = res.md_path.read_text(encoding="utf-8")
    assert "| 1 | 2 | 2.000 | 2.00x slower | 1.5 | -25.0% | measured-peaks |" in md
    text = format_text(res)
    assert "predicted s" in text and "-25.0%" in text and "measured-peaks" in text
