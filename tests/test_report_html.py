"""``xfbench report`` (reports/html.py): a self-contained page, verdict first, machines by alias.

Expected figures are hand arithmetic in the comments, not the module's own output. The bad-input tests run the
command as a real subprocess (one line ``xfbench: error: ...``, exit 2, no traceback).
"""

from __future__ import annotations

import base64
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from xfbench.reports import html as report_html
from xfbench.reports.paths import subprocess_env
from xfbench.reports.writer import RunWriter, read_text_file

REPO = Path(__file__).resolve().parents[1]
REFERENCE = REPO / "reports" / "reference"
# The smallest committed reference CSVs: 18 model rows (tensorflow), 95 exercise rows (torch).
SMALL = REFERENCE / "cpu-amd-epyc-2core-quick-tensorflow-models-nomemory.csv"
EXERCISES = REFERENCE / "exercises-torch-cpu.csv"
BINARY = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xfe\xfd" + bytes(range(256))


def _row(**cells: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "kind": "model",
        "backend": "torch",
        "device": "cpu",
        "model": "cnn3",
        "phase": "inference",
        "batch_size": 1,
        "dtype": "float32",
        "status": "ok",
    }
    row.update(cells)
    return row


def _write(directory: Path, rows: list[dict[str, Any]]) -> Path:
    with RunWriter(directory) as w:
        for r in rows:
            w.write_row(r)
    return w.path


def _render(*paths: Path, reference: str | None = None) -> str:
    machines = report_html.load_machines(list(paths))
    return report_html.render(machines, reference)


def _section_ids(page: str) -> list[str]:
    return re.findall(r'<section id="([^"]+)"', page)


# --------------------------------------------------------------------------------------------- pure arithmetic


def test_geometric_mean_by_hand() -> None:
    assert report_html.geometric_mean([2.0, 8.0]) == pytest.approx(4.0)  # sqrt(16)
    assert report_html.geometric_mean([0.5, 2.0, 1.0]) == pytest.approx(1.0)  # cbrt(1)
    assert report_html.geometric_mean([]) != report_html.geometric_mean([])  # NaN


def test_speed_words() -> None:
    assert report_html.speed_words(4.0) == "4.00x slower"
    assert report_html.speed_words(0.8) == "1.25x faster"  # 1 / 0.8
    assert report_html.speed_words(1.001) == "same speed"


def test_targets_of_the_issue() -> None:
    assert report_html.target_for("time", "torch") == report_html.Target(0.15, 0.40)
    assert report_html.target_for("memory", "tensorflow") == report_html.Target(0.10, 0.25)
    assert report_html.target_for("memory", "mxnet") == report_html.Target(0.15, 0.25)
    assert report_html.target_for("flops", "torch").worst < 0.0005 + 1e-12


def test_quality_median_and_worst_by_hand(tmp_path: Path) -> None:
    # time errors +10%, -20%, +50% -> |.| = 0.1, 0.2, 0.5: median 0.2 > 0.15, worst 0.5 > 0.4: missed.
    # memory errors +12%, -14% -> median 0.13, worst 0.14: met for mxnet (<= 15%), missed for torch (> 10%).
    rows = []
    for backend in ("torch", "mxnet"):
        for i, (t_err, m_err) in enumerate([(0.10, 0.12), (-0.20, -0.14), (0.50, None)]):
            rows.append(
                _row(backend=backend, batch_size=i + 1, time_rel_error=t_err, mem_rel_error=m_err, flops_rel_error=0.0)
            )
    machines = report_html.load_machines([_write(tmp_path / "a", rows)])
    got = {(b, q.metric): q for _, b, _, qs in report_html.quality_table(machines) for q in qs}
    t = got[("torch", "time")]
    assert (t.count, t.median, t.worst, t.met) == (3, pytest.approx(0.2), pytest.approx(0.5), False)
    assert got[("mxnet", "memory")].median == pytest.approx(0.13)
    assert got[("mxnet", "memory")].met is True
    assert got[("torch", "memory")].met is False
    assert got[("torch", "flops")].met is True
    page = report_html.render(machines)
    assert '<td class="met">met</td>' in page and '<td class="missed">missed</td>' in page


# --------------------------------------------------------------------------------------------- the comparison


@pytest.fixture
def two_machines(tmp_path: Path) -> tuple[Path, Path]:
    # Reference "alpha": 1.0 s and 1.0 s; "beta": 2.0 s and 8.0 s -> ratios 2 and 8, geometric mean 4.
    # A third configuration (batch 3) only on alpha: not paired, not counted.
    a = _write(
        tmp_path / "a",
        [
            _row(machine="alpha", batch_size=1, time_median_s=1.0, time_rel_error=0.05),
            _row(machine="alpha", batch_size=2, time_median_s=1.0, time_rel_error=-0.15),
            _row(machine="alpha", batch_size=3, time_median_s=1.0),
        ],
    )
    b = _write(
        tmp_path / "b",
        [
            _row(machine="beta", batch_size=1, time_median_s=2.0, time_rel_error=0.30),
            _row(machine="beta", batch_size=2, time_median_s=8.0, time_rel_error=-0.10),
        ],
    )
    return a, b


def test_geometric_mean_per_backend_and_phase(two_machines: tuple[Path, Path]) -> None:
    machines = report_html.load_machines(list(two_machines))
    assert [m.alias for m in machines] == ["A", "B"]
    pairs = report_html.pair_with_reference(machines, "A")
    assert sorted(pairs["ratio"]) == [pytest.approx(2.0), pytest.approx(8.0)]
    geo = report_html.geomeans(pairs)
    assert len(geo) == 1
    row = geo.iloc[0]
    assert (row["alias"], row["backend"], row["phase"], row["count"]) == ("B", "torch", "inference", 2)
    assert row["geomean"] == pytest.approx(4.0)
    assert row["own_error"] == pytest.approx(0.20)  # median of |0.30|, |-0.10|
    assert row["ref_error"] == pytest.approx(0.10)  # median of |0.05|, |-0.15|
    page = report_html.render(machines)
    assert "4.000" in page and "4.00x slower" in page
    assert "8.00x slower" in page and "2.00x slower" in page


def test_declared_reference_turns_the_ratios(two_machines: tuple[Path, Path]) -> None:
    machines = report_html.load_machines(list(two_machines))
    geo = report_html.geomeans(report_html.pair_with_reference(machines, "B"))
    assert geo.iloc[0]["geomean"] == pytest.approx(0.25)  # 1 / 4
    page = report_html.render(machines, "B")
    assert "4.00x faster" in page
    assert report_html.resolve_reference(machines, list(two_machines), str(two_machines[1])) == "B"


# --------------------------------------------------------------------------------------------- the page


def test_one_file_sections_and_plots() -> None:
    page = _render(SMALL)
    assert _section_ids(page) == ["verdict", "provenance", "summary", "models", "plots", "data"]
    for fig in ("plot-time", "plot-memory", "plot-throughput"):
        assert f'<figure id="{fig}"' in page
    assert page.count("<svg") == 3
    assert 'id="models-inference"' in page and 'id="models-training"' in page
    assert "AMD EPYC" in page and "tensorflow 2." in page  # provenance from the env columns
    assert page.index('id="verdict"') < page.index('id="provenance"') < page.index('id="summary"')


def test_two_files_give_the_comparison_and_every_plot_group(tmp_path: Path) -> None:
    first = REFERENCE / "cpu-amd-epyc-2core-issue20-default-run1.csv"
    second = REFERENCE / "cpu-amd-epyc-2core-issue20-avx2-run1.csv"
    page = _render(first, second, EXERCISES)
    assert _section_ids(page) == list(report_html.SECTIONS)
    for fig in ("plot-time", "plot-memory", "plot-throughput", "plot-matmul", "plot-scaling", "plot-exercises"):
        assert f'<figure id="{fig}"' in page
    assert "Reference machine: <b>A</b>" in page
    assert "ONEDNN_MAX_CPU_ISA=AVX2" in page  # what tells machine B apart, in the legend


def test_no_remote_reference_no_script() -> None:
    page = _render(SMALL, EXERCISES)
    assert re.search(r"https?://", page, re.I) is None
    assert "<script" not in page.lower() and "<link" not in page.lower() and "@import" not in page
    for url in re.findall(r'(?:src|href)="([^"]*)"', page):
        assert url.startswith(("#", "data:")), url[:80]


def test_machines_by_alias_not_by_file_name(tmp_path: Path) -> None:
    one = tmp_path / "zebra-secret-run.csv"
    two = tmp_path / "okapi-hidden-run.csv"
    shutil.copy(SMALL, one)
    shutil.copy(EXERCISES, two)
    page = _render(one, two)
    for word in ("zebra", "okapi", "secret", "hidden", "nomemory", "exercises-torch"):
        assert word not in page
    assert "A (reference)" in page and "<th>B</th>" in page
    assert 'download="machine-A.csv"' in page and 'download="machine-B.csv"' in page


def test_source_rows_are_embedded_as_they_were_read() -> None:
    page = _render(SMALL)
    (b64,) = re.findall(r'href="data:text/csv;charset=utf-8;base64,([^"]+)"', page)
    assert base64.b64decode(b64).decode("utf-8") == read_text_file(SMALL)


def test_status_reasons_are_listed(tmp_path: Path) -> None:
    path = _write(
        tmp_path / "a",
        [
            _row(time_median_s=1.0),
            _row(batch_size=2, status="skipped", message="mxnet is not installed"),
            _row(batch_size=3, status="oom", message="out of memory at batch 3"),
        ],
    )
    page = _render(path)
    assert "mxnet is not installed" in page and "out of memory at batch 3" in page
    # the status table: 1 ok, 1 skipped, 1 oom, 0 error, 3 rows
    assert re.search(r"<td>A</td>" + r"".join(rf'<td class="n">{n}</td>' for n in (1, 1, 1, 0, 3)), page)


# --------------------------------------------------------------------------------------------- the command


def xf(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "xfbench.benchmarks.cli", *args],
        cwd=cwd,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_command_writes_the_page_and_prints_its_path(tmp_path: Path) -> None:
    out = tmp_path / "r.html"
    proc = xf(tmp_path, "report", str(SMALL), "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(out)
    assert out.read_text(encoding="utf-8").startswith("<!DOCTYPE html>")


def _bad(tmp_path: Path, kind: str) -> tuple[list[str], str]:
    """(arguments after ``report``, what the one error line must name)."""
    out = str(tmp_path / "r.html")
    p = tmp_path / f"{kind}.csv"
    if kind == "empty":
        p.write_text("")
        return [str(p), "-o", out], "empty file"
    if kind == "binary":
        p.write_bytes(BINARY)
        return [str(p), "-o", out], "binary content"
    if kind == "other_schema":
        p.write_text("name,score\nalice,3\n", encoding="utf-8")
        return [str(p), "-o", out], "no schema_version column"
    if kind == "header_only":
        p.write_text(_header(), encoding="utf-8")
        return [str(p), "-o", out], "no rows"
    if kind == "out_in_missing_folder":
        return [str(SMALL), "-o", str(tmp_path / "nowhere" / "r.html")], "does not exist"
    if kind == "out_is_a_directory":
        return [str(SMALL), "-o", str(tmp_path)], "is a directory"
    if kind == "unknown_reference":
        return [str(SMALL), str(EXERCISES), "-o", out, "--reference", "Q"], "--reference 'Q'"
    raise AssertionError(kind)


def _header() -> str:
    return next(ln for ln in read_text_file(SMALL).splitlines() if ln.startswith("schema_version")) + "\n"


@pytest.mark.parametrize(
    "kind",
    [
        "empty",
        "binary",
        "other_schema",
        "header_only",
        "out_in_missing_folder",
        "out_is_a_directory",
        "unknown_reference",
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path: Path, kind: str) -> None:
    args, needle = _bad(tmp_path, kind)
    proc = xf(tmp_path, "report", *args)
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    assert len(lines) == 1 and lines[0].startswith("xfbench: error: "), proc.stderr
    assert needle in lines[0], lines[0]
    assert "allowed" in lines[0] or "reads version" in lines[0], lines[0]
    assert not (tmp_path / "r.html").exists()
