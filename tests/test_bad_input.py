"""Bad input on every user-facing command: one line ``xfbench: error: ...`` naming the bad value, exit 2,
no traceback; a run that measured nothing does not exit 0; a failed merge loses no finished row.

Every command runs as a real subprocess (``python -m xfbench.benchmarks.cli``) in ``tmp_path``, with the
environment of :func:`reports.paths.subprocess_env`. Framework-free: a backend that "fails to import" is a
fake ``mxnet`` package on ``PYTHONPATH`` whose import raises, as MXNet 1.9.1's does under numpy >= 1.24.
Expected byte counts are hand arithmetic in the comments, not the ledger's output.
"""

from __future__ import annotations

import csv
import importlib.util
import io
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from xfbench.reports.paths import subprocess_env
from xfbench.reports.schema import COLUMN_NAMES
from xfbench.reports.writer import RunWriter

REPO = Path(__file__).resolve().parents[1]
# A PNG header and bytes that are not UTF-8: what a user passes by mistake.
BINARY = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xfe\xfd" + bytes(range(256))


def xf(
    cwd: Path, *args: str, extra_env: dict[str, str] | None = None, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "xfbench.benchmarks.cli", *args],
        cwd=cwd,
        env=subprocess_env(extra_env),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def one_error_line(proc: subprocess.CompletedProcess[str], *needles: str) -> str:
    """Exit 2, exactly one stderr line, starting ``xfbench: error:``, naming every needle; no traceback."""
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:], proc.stdout[-2000:])
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("xfbench: error: "), lines[0]
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


# ------------------------------------------------------------------------------------------- spec-file inputs


def _bad_spec(tmp_path: Path, kind: str) -> tuple[str, str]:
    """(path as passed, what the error must name) for one class of bad spec file."""
    if kind == "empty":
        p = tmp_path / "empty.json"
        p.write_text("")
        return str(p), "malformed spec file"
    if kind == "binary":
        p = tmp_path / "picture.json"
        p.write_bytes(BINARY)
        return str(p), "not a text spec file"
    if kind == "directory":
        p = tmp_path / "folder"
        p.mkdir()
        return str(p), "Is a directory"
    if kind == "unreadable":
        # A path through a regular file: unreadable for every user, root included (ENOTDIR).
        f = tmp_path / "plain.txt"
        f.write_text("x")
        return str(f / "model.json"), "Not a directory"
    if kind == "truncated":
        p = tmp_path / "cut.json"
        p.write_text('{"input_shape": [1, 28, 28], "layers": [{"type": "Dense", "un')
        return str(p), "malformed spec file"
    raise AssertionError(kind)


SPEC_CLASSES = ("empty", "binary", "directory", "unreadable", "truncated")


@pytest.mark.parametrize("kind", SPEC_CLASSES)
@pytest.mark.parametrize(
    "command",
    [
        ["predict"],
        ["run", "--no-memory", "--models"],
        ["parity", "--model"],
        ["scale", "--workers", "1", "--model"],
    ],
    ids=["predict", "run", "parity", "scale"],
)
def test_bad_spec_file(tmp_path: Path, command: list[str], kind: str) -> None:
    path, needle = _bad_spec(tmp_path, kind)
    one_error_line(xf(tmp_path, *command, path), path, needle)


def test_unreadable_spec_file_by_permission(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        pytest.skip("running as root: file permissions do not stop root from reading (ENOTDIR case covers it)")
    p = tmp_path / "secret.json"
    p.write_text('{"input_shape": [4], "layers": [{"type": "Dense", "units": 2}]}')
    p.chmod(0)
    one_error_line(xf(tmp_path, "predict", str(p)), str(p), "Permission denied")


# ------------------------------------------------------------------------------------------------ absurd sizes


@pytest.fixture
def huge_spec(tmp_path: Path) -> Path:
    p = tmp_path / "huge.json"
    p.write_text(json.dumps({"name": "huge", "input_shape": [1000], "layers": [{"type": "Dense", "units": 10**12}]}))
    return p


def test_predict_prints_huge_figures(tmp_path: Path, huge_spec: Path) -> None:
    proc = xf(tmp_path, "predict", str(huge_spec), "--json")
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    data = json.loads(proc.stdout)
    assert data["params"] == 1000 * 10**12 + 10**12  # weights + biases


def test_run_refuses_dense_of_10_12_units_before_allocating(tmp_path: Path, huge_spec: Path) -> None:
    # Inference, batch 1, float32: parameters (1000 * 10^12 + 10^12) * 4 = 4,004,000,000,000,000
    # + input 1000 * 4 = 4,000 + output 10^12 * 4 = 4,000,000,000,000 -> 4,008,000,000,004,000 bytes.
    proc = xf(tmp_path, "run", "--models", str(huge_spec), "--phase", "inference", "--batch", "1", timeout=60)
    one_error_line(proc, str(huge_spec), "4,008,000,000,004,000 bytes", "RAM")
    assert not (tmp_path / "reports").exists()  # refused before pytest started: no run file


def test_pytest_benchmarks_refuses_it_too(tmp_path: Path, huge_spec: Path) -> None:
    proc = _pytest_benchmarks(tmp_path, "--models", str(huge_spec), "--phase", "inference", "--batch", "1")
    assert proc.returncode == 4 and "Traceback" not in proc.stderr
    assert "4,008,000,000,004,000 bytes" in proc.stderr


def test_parity_refuses_it(tmp_path: Path, huge_spec: Path) -> None:
    # Inference, batch 2: 4,004,000,000,000,000 + input 2 * 1000 * 4 = 8,000 + output 2 * 10^12 * 4.
    one_error_line(xf(tmp_path, "parity", "--model", str(huge_spec)), "huge", "4,012,000,000,008,000 bytes")


def test_scale_refuses_it(tmp_path: Path, huge_spec: Path) -> None:
    # Training, per-worker batch 8, sgd: parameters + gradients 2 * 4,004,000,000,000,000; input 8 * 1000 * 4 =
    # 32,000; labels 8 int64 = 64; output 8 * 10^12 * 4 = 3.2e13, its gradient another 3.2e13.
    proc = xf(tmp_path, "scale", "--model", str(huge_spec), "--workers", "1", "--batch", "8", "--mode", "weak")
    one_error_line(proc, "huge", "8,072,000,000,032,064 bytes")


def test_matmul_refuses_a_size_that_cannot_fit(tmp_path: Path) -> None:
    # A, B and C of a 10^6 cube in float32: 3 * 10^12 * 4 bytes.
    proc = xf(tmp_path, "matmul", "--sizes", "1000000", "--shapes", "none", "--dtypes", "float32", "--device", "cpu")
    one_error_line(proc, "1000000x1000000x1000000", "12,000,000,000,000 bytes")


def test_run_refuses_an_absurd_batch(tmp_path: Path) -> None:
    # mlp inference at batch 10^12: the input alone is 10^12 * 784 * 4 bytes, > 3e15.
    one_error_line(xf(tmp_path, "run", "--models", "mlp", "--batch", str(10**12), "--phase", "inference"), "mlp")


def test_scale_refuses_more_workers_than_cores(tmp_path: Path) -> None:
    n = (os.cpu_count() or 1) * 8
    one_error_line(xf(tmp_path, "scale", "--model", "mlp", "--workers", f"1,{n}", "--mode", "weak"), f"--workers {n}")


def test_exercises_refuses_a_budget_beyond_ram_and_swap(tmp_path: Path) -> None:
    # 10^8 GB = 10^17 bytes.
    proc = xf(tmp_path, "exercises", "--memory-budget", "100000000GB", "--analytic-only", "--no-report")
    one_error_line(proc, "100000000GB", "100,000,000,000,000,000 bytes")


# --------------------------------------------------------------------------------------------- report CSVs


def _report(directory: Path, machine: str, seconds: float) -> Path:
    with RunWriter(directory / machine) as w:
        w.write_row(
            {
                "machine": machine,
                "backend": "torch",
                "device": "cpu",
                "model": "cnn3",
                "phase": "inference",
                "batch_size": 2,
                "dtype": "float32",
                "status": "ok",
                "time_median_s": seconds,
            }
        )
    return w.path


def _parts(path: Path) -> tuple[str, list[str], list[str]]:
    """(leading ``#`` lines, header, first row) of a report written by RunWriter: plain CSV since issue 22, so
    the first part is empty; files of older releases began with a ``#`` history line."""
    text = path.read_text(encoding="utf-8")
    comment = ""
    while text.startswith("#"):
        line, text = text.split("\n", 1)
        comment += line + "\n"
    header, row = list(csv.reader(io.StringIO(text)))[:2]
    return comment, header, row


def _line(cells: list[str]) -> str:
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerow(cells)
    return out.getvalue()


def _bad_csv(tmp_path: Path, kind: str) -> tuple[list[str], str]:
    """(files as passed, what the error must name) for one class of malformed report input."""
    good = _report(tmp_path, "A", 1.0)
    comment, header, row = _parts(good)
    lines = [comment, _line(header), _line(row)]
    p = tmp_path / f"{kind}.csv"
    if kind == "empty":
        p.write_text("")
        return [str(p)], "empty file"
    if kind == "binary":
        p.write_bytes(BINARY)
        return [str(p)], "binary content"
    if kind == "directory":
        d = tmp_path / "adir"
        d.mkdir()
        return [str(d)], "is a directory"
    if kind == "unreadable":
        return [str(good / "x.csv")], "cannot read (Not a directory)"
    if kind == "missing":
        return [str(tmp_path / "nowhere.csv")], "no such file"
    if kind == "truncated_row":
        p.write_text(lines[0] + lines[1] + lines[2][:40], encoding="utf-8")  # a run killed mid-row
        return [str(p)], f"line {2 + comment.count(chr(10))}: truncated row"
    if kind == "other_version":
        at = header.index("schema_version")
        p.write_text(lines[0] + lines[1] + _line(["1" if i == at else c for i, c in enumerate(row)]))
        return [str(p)], "schema version 1"
    if kind == "missing_column":
        at = header.index("model")
        keep = [i for i in range(len(header)) if i != at]
        p.write_text(lines[0] + _line([header[i] for i in keep]) + _line([row[i] for i in keep]))
        return [str(p)], "missing column(s) model"
    if kind == "non_numeric":
        at = header.index("time_median_s")
        p.write_text(lines[0] + lines[1] + _line(["fast" if i == at else c for i, c in enumerate(row)]))
        return [str(p)], "column time_median_s = 'fast' is not a number"
    if kind == "same_file_twice":
        return [str(good), str(good)], "the same file is given twice"
    if kind == "same_file_two_spellings":
        return [str(good), str(good.parent / ".." / good.parent.name / good.name)], "the same file is given twice"
    if kind == "copy_of_a_run":
        p.write_bytes(good.read_bytes())
        return [str(good), str(p)], "is also in"
    raise AssertionError(kind)


CSV_CLASSES = (
    "empty",
    "binary",
    "directory",
    "unreadable",
    "missing",
    "truncated_row",
    "other_version",
    "missing_column",
    "non_numeric",
    "same_file_twice",
    "same_file_two_spellings",
    "copy_of_a_run",
)


@pytest.mark.parametrize("kind", CSV_CLASSES)
def test_merge_refuses(tmp_path: Path, kind: str) -> None:
    files, needle = _bad_csv(tmp_path, kind)
    other = _report(tmp_path, "B", 2.0)
    inputs = files if len(files) > 1 else [str(other), *files]
    line = one_error_line(xf(tmp_path, "merge", *inputs, "-o", str(tmp_path / "merged.csv")), needle)
    assert files[-1] in line
    assert not (tmp_path / "merged.csv").exists()


@pytest.mark.parametrize("kind", CSV_CLASSES)
def test_compare_refuses(tmp_path: Path, kind: str) -> None:
    files, needle = _bad_csv(tmp_path, kind)
    other = _report(tmp_path, "B", 2.0)
    inputs = files if len(files) > 1 else [str(other), *files]
    line = one_error_line(xf(tmp_path, "compare", *inputs, "--out", str(tmp_path / "cmp")), needle)
    assert files[-1] in line


def test_merge_latest_names_the_bad_file_in_the_folder(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    _report(runs, "A", 1.0)  # reports go to runs/A/
    folder = runs / "A"
    (folder / "zz-bad.csv").write_bytes(BINARY)
    one_error_line(xf(tmp_path, "merge", "--latest", str(folder), "-o", "m.csv"), "zz-bad.csv", "binary content")
    one_error_line(xf(tmp_path, "merge", "--latest", str(tmp_path / "nowhere"), "-o", "m.csv"), "nowhere")


def test_merge_output_must_be_a_file_and_a_failed_merge_keeps_the_old_output(tmp_path: Path) -> None:
    a, b = _report(tmp_path, "A", 1.0), _report(tmp_path, "B", 2.0)
    out = tmp_path / "merged.csv"
    assert xf(tmp_path, "merge", str(a), "-o", str(out)).returncode == 0
    before = out.read_bytes()
    assert len(before.decode().splitlines()) == 2  # header, A's row (plain CSV)
    bad = tmp_path / "bad.csv"
    bad.write_text(a.read_text().splitlines(keepends=True)[0] + a.read_text().splitlines(keepends=True)[1] + "3,x\n")
    one_error_line(xf(tmp_path, "merge", str(b), str(bad), "-o", str(out)), "bad.csv", "truncated row")
    assert out.read_bytes() == before  # the finished rows already merged are still there
    one_error_line(xf(tmp_path, "merge", str(a), "-o", str(tmp_path)), str(tmp_path), "is a directory")


def test_compare_out_must_be_a_directory(tmp_path: Path) -> None:
    a, b = _report(tmp_path, "A", 1.0), _report(tmp_path, "B", 2.0)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    one_error_line(xf(tmp_path, "compare", str(a), str(b), "--out", str(blocker)), str(blocker))


def test_version_2_file_merges_with_blank_new_columns(tmp_path: Path) -> None:
    a = _report(tmp_path, "A", 1.0)
    _, header, row = _parts(a)
    keep = [i for i, c in enumerate(header) if c != "tf32"]
    new_cells = {"schema_version": "2", "run_id": "old-run"}
    old = tmp_path / "v2.csv"
    old.write_text(
        "# v2\n" + _line([header[i] for i in keep]) + _line([new_cells.get(header[i], row[i]) for i in keep])
    )
    proc = xf(tmp_path, "merge", str(a), str(old), "-o", "m.csv")
    assert proc.returncode == 0, proc.stderr
    merged = (tmp_path / "m.csv").read_text().splitlines()
    assert merged[0].split(",") == list(COLUMN_NAMES) and len(merged) == 3  # plain CSV: header first


# -------------------------------------------------------------------------------------- backends and options


@pytest.fixture
def broken_mxnet(tmp_path: Path) -> dict[str, str]:
    """PYTHONPATH with an ``mxnet`` whose import fails like MXNet 1.9.1's under numpy >= 1.24."""
    pkg = tmp_path / "fake" / "mxnet"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("raise AttributeError(\"module 'numpy' has no attribute 'PZERO'\")\n")
    path = os.pathsep.join([str(tmp_path / "fake"), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return {"PYTHONPATH": path}


@pytest.mark.parametrize(
    "args",
    [
        ["run", "--backend", "mxnet", "--models", "mlp"],
        ["parity", "--backend", "mxnet", "--model", "mlp"],
        ["matmul", "--backend", "mxnet", "--device", "cpu", "--sizes", "64"],
        ["scale", "--backend", "mxnet", "--model", "lenet", "--workers", "1"],
        ["exercises", "--backend", "mxnet", "--only", "homl14-2", "--no-report"],
    ],
    ids=["run", "parity", "matmul", "scale", "exercises"],
)
def test_named_backend_that_fails_to_import(tmp_path: Path, broken_mxnet: dict[str, str], args: list[str]) -> None:
    line = one_error_line(xf(tmp_path, *args, extra_env=broken_mxnet), "--backend mxnet", "PZERO")
    assert "pip install 'xfbench[mxnet]'" in line
    assert not (tmp_path / "reports").exists()  # nothing ran, nothing written


@pytest.mark.parametrize("name", ["torch", "tensorflow", "mxnet"])
def test_named_backend_not_installed(tmp_path: Path, name: str) -> None:
    if importlib.util.find_spec(name) is not None:
        pytest.skip(f"{name} is installed in this environment")
    line = one_error_line(xf(tmp_path, "run", "--backend", name), f"--backend {name}", "not installed")
    assert f"pip install 'xfbench[{name}]'" in line
    assert not (tmp_path / "reports").exists()


def _pytest_benchmarks(
    tmp_path: Path, *args: str, extra_env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "pytest", str(REPO / "benchmarks"), "--benchmark-only", "-p", "no:cacheprovider"]
    cmd += ["-o", "python_files=bench_*.py", "--report-dir", str(tmp_path / "runs"), *args]
    return subprocess.run(
        cmd, cwd=tmp_path, env=subprocess_env(extra_env), capture_output=True, text=True, timeout=300, check=False
    )


def test_pytest_benchmarks_named_backend_is_a_usage_error(tmp_path: Path, broken_mxnet: dict[str, str]) -> None:
    proc = _pytest_benchmarks(tmp_path, "--backend", "mxnet", extra_env=broken_mxnet)
    assert proc.returncode == 4, proc.stdout[-2000:]
    assert "Traceback" not in proc.stderr
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("ERROR:")]
    assert len(errors) == 1 and "--backend mxnet" in errors[0] and "tox -e mxnet" in errors[0]


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["run", "--tf32", "maybe"], ["'maybe'", "on, off"]),
        (["matmul", "--tf32", "1"], ["'1'", "on, off"]),
        (["run", "--phase", "testing"], ["'testing'", "inference, training"]),
        (["run", "--batch", "0"], ["'0'", "positive"]),
        (["run", "--device", "tpu"], ["'tpu'", "gpu:N"]),
        (["run", "--suite", "everything"], ["'everything'", "models"]),
        (["run", "--memory-limit", "lots"], ["'lots'", "4GB"]),
        (["run", "--rounds", "0"], ["0", "positive"]),
        (["run", "--models", "resnet9000"], ["'resnet9000'", "cnn3"]),
        (["run", "--backends", "torch"], ["--backends", "unrecognized"]),
        (["parity", "--device", "tpu"], ["'tpu'", "gpu:N"]),
        (["scale", "--python", "torch=/"], ["torch=/", "not an executable file"]),
        (["exercises", "--only", "nosuch"], ["nosuch"]),
        (["exercises", "--memory-budget", "lots"], ["'lots'"]),
    ],
)
def test_bad_option_values(tmp_path: Path, args: list[str], needles: list[str]) -> None:
    one_error_line(xf(tmp_path, *args), *needles)


def test_bad_tf32_in_the_environment(tmp_path: Path) -> None:
    proc = xf(tmp_path, "run", "--models", "mlp", extra_env={"XFBENCH_TF32": "maybe"})
    one_error_line(proc, "XFBENCH_TF32='maybe'", "on, off")


def test_report_dir_that_is_a_file(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    one_error_line(xf(tmp_path, "run", "--models", "mlp", "--report-dir", str(blocker)), str(blocker))
    one_error_line(xf(tmp_path, "matmul", "--sizes", "64", "--report-dir", str(blocker)), str(blocker))
    one_error_line(
        xf(tmp_path, "scale", "--model", "lenet", "--workers", "1", "--report-dir", str(blocker)), str(blocker)
    )


# ------------------------------------------------------------------------------------------- measured nothing


def test_run_that_measured_nothing_says_so_and_fails(tmp_path: Path) -> None:
    # No machine here has a GPU numbered 7 visible to every framework: every configuration skips.
    proc = xf(tmp_path, "run", "--suite", "models", "--models", "mlp", "--phase", "inference", "--device", "gpu:7",
              "--no-memory", timeout=600)  # fmt: skip
    assert proc.returncode == 5, (proc.returncode, proc.stdout[-3000:], proc.stderr[-2000:])
    assert "measured nothing" in proc.stdout
    assert "Traceback" not in proc.stderr
    (csv_file,) = (tmp_path / "reports" / "runs").glob("*.csv")  # in the working directory, not the package
    rows = csv_file.read_text().splitlines()[1:]  # plain CSV: the header, then the rows
    assert len(rows) == 3 and all(",skipped," in r for r in rows)  # one skipped row per backend, none lost


# ------------------------------------------------------------------------------------------------- stdout pipe


def test_closed_stdout_pipe_is_no_traceback(tmp_path: Path) -> None:
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader (`head -1`) is gone before xfbench writes
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "xfbench.benchmarks.cli", "predict", "vgg19"],
            cwd=tmp_path,
            env=subprocess_env(),
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            timeout=120,
            check=False,
        )
    finally:
        os.close(write_end)
    assert proc.returncode == 141
    assert proc.stderr == ""


# ---------------------------------------------------------------------------------- --tf32 reaches the child


def _unset_tf32(monkeypatch: pytest.MonkeyPatch) -> None:
    """XFBENCH_TF32 absent during the test and restored after it, whatever the command under test sets."""
    monkeypatch.setenv("XFBENCH_TF32", "on")  # recorded first: undo ends with the variable as it was
    monkeypatch.delenv("XFBENCH_TF32")


def test_run_tf32_reaches_pytest_and_its_subprocesses(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from xfbench.benchmarks import cli
    from xfbench.benchmarks.cli import run as run_cmd

    seen: dict[str, object] = {}

    def fake_run_pytest(cmd: list[str]) -> int:
        seen["cmd"] = cmd
        seen["env"] = run_cmd.subprocess_env()  # what the child gets
        return 0

    monkeypatch.chdir(tmp_path)
    _unset_tf32(monkeypatch)
    monkeypatch.setattr(run_cmd, "_run_pytest", fake_run_pytest)
    assert cli.main(["run", "--models", "mlp", "--tf32", "OFF", "--suite", "models"]) == 0
    cmd = seen["cmd"]
    assert isinstance(cmd, list) and cmd[cmd.index("--tf32") + 1] == "off"
    env = seen["env"]
    assert isinstance(env, dict) and env["XFBENCH_TF32"] == "off"


def test_matmul_tf32_is_set_before_the_sweep(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from xfbench.benchmarks import matmul
    from xfbench.benchmarks.cli import main

    seen: dict[str, str | None] = {}

    def fake_sweep(cfg: object, writer: object) -> SimpleNamespace:
        seen["tf32"] = os.environ.get("XFBENCH_TF32")
        return SimpleNamespace(rows=[{"status": "ok"}], notes=[], csv_path=tmp_path / "r.csv", png_path=None)

    monkeypatch.chdir(tmp_path)
    _unset_tf32(monkeypatch)
    monkeypatch.setattr(matmul, "run_sweep", fake_sweep)
    monkeypatch.setattr(matmul, "summary_table", lambda rows: f"{len(rows)} rows")
    assert main(["matmul", "--backend", "numpy", "--sizes", "64", "--tf32", "on", "--no-plot"]) == 0
    assert seen["tf32"] == "on"


def test_parity_without_any_framework_is_one_line(tmp_path: Path) -> None:
    if any(importlib.util.find_spec(n) is not None for n in ("torch", "tensorflow", "mxnet")):
        pytest.skip("a framework is installed in this environment")
    one_error_line(xf(tmp_path, "parity", "--model", "mlp"), "none of the backends", "pip install")


# --------------------------------------------------------------- named vs profile configurations over RAM


def test_profile_configuration_over_ram_is_skipped_but_a_named_one_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    from xfbench.benchmarks.cli import usage
    from xfbench.benchmarks.harness.options import parse, select_configs

    # A machine with 10^6 bytes of RAM. mlp (Flatten, Dense 256 relu, Dense 10) inference at the quick batch 64:
    # parameters (784*256 + 256 + 256*10 + 10) * 4 = 814,120; input 64 * 784 * 4 = 200,704; the largest working
    # set is the hidden layer's output and its pre-activation, 2 * 64 * 256 * 4 = 131,072 -> 1,145,896 bytes.
    monkeypatch.setattr(usage, "host_ram_bytes", lambda: 10**6)
    chosen = select_configs(parse({"backend": "torch", "phase": "inference"}))  # the quick profile chose them all
    assert chosen.configs == []
    assert {cfg.model for cfg, _ in chosen.infeasible} >= {"mlp", "vgg11"}
    assert all("1,000,000 bytes" in why for _, why in chosen.infeasible)
    with pytest.raises(usage.UsageError, match=r"--models mlp inference at batch 64: .* needs 1,145,896 bytes"):
        select_configs(parse({"backend": "torch", "models": "mlp", "phase": "inference"}))  # the user named it
    # Batch 1: 814,120 + 3,136 (input) + 2 * 256 * 4 = 2,048 -> 819,304 bytes: fits, so it runs.
    one = select_configs(parse({"backend": "torch", "models": "mlp", "phase": "inference", "batch": "1"}))
    assert len(one.configs) == 1
