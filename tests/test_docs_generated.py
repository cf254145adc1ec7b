"""The measured pages of docs/measured/ are generated from the committed reference CSVs (reports/markdown.py):
regenerated here, they must equal the committed ones, and their numbers must be the CSVs' numbers."""

from __future__ import annotations

import csv
import statistics
from pathlib import Path

import pytest
from xfbench.reports.markdown import DOCS_DIR, PAGES, REFERENCE_DIR, exercise_fields, render_all, short_model, write_all

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / DOCS_DIR


def _checkout() -> None:
    if not DOCS.is_dir() or not REFERENCE_DIR.is_dir():
        pytest.skip("docs/measured or reports/reference is absent (installed package, not a source checkout)")


def test_every_committed_page_is_the_generated_one(tmp_path: Path) -> None:
    _checkout()
    written = write_all(tmp_path)
    assert sorted(p.name for p in written) == sorted([f"{p.name}.md" for p in PAGES] + ["index.md"])
    stale = [
        p.name
        for p in written
        if not (DOCS / p.name).is_file() or (DOCS / p.name).read_text("utf-8") != p.read_text("utf-8")
    ]
    assert stale == [], f"regenerate with `xfbench report --markdown docs/measured`: {stale}"
    extra = sorted(p.name for p in DOCS.glob("*.md") if not (tmp_path / p.name).is_file())
    assert extra == [], f"pages in docs/measured that no manifest entry generates: {extra}"


def test_manifest_names_committed_csvs_once() -> None:
    _checkout()
    files = [name for page in PAGES for _label, name in page.runs]
    assert len(files) == len(set(files))
    assert [f for f in files if not (REFERENCE_DIR / f).is_file()] == []
    for page in PAGES:
        assert len({label for label, _ in page.runs}) == len(page.runs)
        assert not page.pair or len(page.runs) == 2


def _csv_rows(name: str) -> list[dict[str, str]]:
    with open(REFERENCE_DIR / name, encoding="utf-8", newline="") as fh:
        return list(csv.DictReader(line for line in fh if not line.startswith("#")))


def _page_line(page: str, prefix: str) -> str:
    lines = [line for line in render_all()[page].splitlines() if line.startswith(prefix)]
    assert len(lines) == 1, (prefix, lines)
    return lines[0]


def test_a_median_recomputed_by_hand_from_the_csv() -> None:
    """run 1 of the uncapped pair, torch training: the median |time error| and |memory error| from the raw rows."""
    _checkout()
    rows = [
        r
        for r in _csv_rows("cpu-amd-epyc-2core-issue20-default-run1.csv")
        if r["kind"] == "model" and r["status"] == "ok" and r["backend"] == "torch" and r["phase"] == "training"
    ]
    assert len(rows) == 12
    time_median = statistics.median(abs(float(r["time_rel_error"])) for r in rows)
    mem_median = statistics.median(abs(float(r["mem_rel_error"])) for r in rows)
    mem_worst = max(abs(float(r["mem_rel_error"])) for r in rows)
    line = _page_line("quick-default-isa.md", "| run 1 | torch | training |")
    assert f"| {time_median:.1%} / " in line
    assert f"| {mem_median:.1%} / {mem_worst:.1%} (12): " in line


def test_run_to_run_coverage_recomputed_by_hand() -> None:
    """The share of (row, direction) pairs whose interval holds the other run's median, TensorFlow, avx2 pair."""
    _checkout()

    def models(name: str) -> dict[tuple[str, ...], dict[str, str]]:
        key = ("model", "phase", "batch_size", "optimizer")
        rows = _csv_rows(name)
        return {
            tuple(r[k] for k in key): r
            for r in rows
            if r["kind"] == "model" and r["status"] == "ok" and r["backend"] == "tensorflow"
        }

    a = models("cpu-amd-epyc-2core-issue20-avx2-run1.csv")
    b = models("cpu-amd-epyc-2core-issue20-avx2-run2.csv")
    covered = judged = 0
    for k in a.keys() & b.keys():
        for this, other in ((a[k], b[k]), (b[k], a[k])):
            judged += 1
            covered += float(this["time_lo_s"]) <= float(other["time_median_s"]) <= float(this["time_hi_s"])
    line = _page_line("quick-avx2.md", "| tensorflow | 24 |")
    assert f"| {covered}/{judged} ({covered / judged:.0%}) |" in line


def test_a_model_row_is_the_csv_row() -> None:
    """One per-model line of the graphs page: measured and predicted time, memory and FLOPs from the CSV row."""
    _checkout()
    (row,) = [
        r
        for r in _csv_rows("cpu-amd-epyc-2core-graphs.csv")
        if r["kind"] == "model"
        and r["status"] == "ok"
        and r["backend"] == "torch"
        and r["model"] == "resnet18"
        and r["phase"] == "training"
    ]
    line = _page_line("graphs.md", "| resnet18 | torch | training | 1 |")
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert cells[4] == f"{float(row['time_median_s']) * 1e3:.1f}"
    assert cells[7] == f"{float(row['mem_measured_bytes']) / 1e6:,.2f}"
    assert cells[9] == f"{float(row['mem_predicted_bytes']) / 1e6:,.2f}"
    assert cells[11] == f"{float(row['flops_counted']) / 1e9:,.4g}"


def test_pages_speak_of_runs_not_of_sessions() -> None:
    _checkout()
    for name, text in render_all().items():
        lowered = text.lower()
        assert "session" not in lowered, name
        assert "../shared" not in text, name


def test_helpers() -> None:
    assert short_model("tests/data/specs/tiny.yaml") == "tiny"
    assert short_model("/abs/densecat.yaml") == "densecat"
    assert short_model("resnet18") == "resnet18"
    fields = exercise_fields(
        "000_ab.txt HOML ch14 ex2 (a) | claim: 1 | predicted: 2 | measured: 3 | verdict: holds | why."
    )
    assert fields == {
        "source": "HOML ch14 ex2 (a)",
        "claim": "1",
        "predicted": "2",
        "measured": "3",
        "verdict": "holds",
        "why": "why.",
    }
    assert exercise_fields("no fields") is None


def test_scaling_efficiency_recomputed_by_hand() -> None:
    """The scaling page's issue-23 TensorFlow line: median and worst |predicted - measured efficiency| in points
    over the N = 2 rows, from the raw CSV cells."""
    _checkout()
    rows = [
        r
        for r in _csv_rows("cpu-amd-epyc-2core-issue23-bench.csv")
        if r["kind"] == "scaling" and r["status"] == "ok" and r["backend"] == "tensorflow" and r["workers"] == "2"
    ]
    assert len(rows) == 6
    points = [100 * abs(float(r["efficiency_predicted"]) - float(r["efficiency"])) for r in rows]
    within = sum(r["time_within_noise"] == "yes" for r in rows)
    line = f"| issue 23 | tensorflow | {statistics.median(points):.1f} / {max(points):.1f} (6) | "
    page = render_all()["scaling.md"]
    assert [ln for ln in page.splitlines() if ln.startswith(line)] == [
        line + f"{sum(p <= 5 for p in points)} | {within}/6 | {'met' if max(points) <= 15 else 'missed'} |"
    ]
