"""The measured pages of ``docs/measured/``: Markdown generated from the committed reference CSVs.

    xfbench report --markdown docs/measured          # or: python -m xfbench.reports.markdown docs/measured

``PAGES`` is the manifest: each page's file name, title, the reference CSVs it is made from (under
``reports/reference/``) and a label per CSV (the run's name on the page). Every page gives, from its CSVs only:

* the provenance of each run: the machine (an alias with its CPU, cores, instruction-set cap, RAM) and the
  environment columns (framework versions, suite commit, row counts), the noise probe's range where the run has one;
* the prediction quality per run, framework and phase: median and worst |error| of time, memory and FLOPs against
  the targets of ``reports.html.TARGETS`` (time median <= 15%, worst <= 40%; memory median <= 10% PyTorch and
  TensorFlow, <= 15% MXNet, worst <= 25%; FLOPs 0.0%), each with a text verdict;
* for a page of two runs of one machine (``pair=True``): the run-to-run figures per framework (measured time moved,
  median and worst; the share of (row, direction) pairs whose between-process interval covers the other run's
  median; predicted time moved), as ``benchmarks/diagnostics/run_pair.py`` computes them;
* per model, per run: measured time (with the between-process interval where the run has one) against the
  prediction, memory (median of the processes, with their spread) against the prediction, FLOPs counted against
  the prediction under the counter's convention.

The exercise page lists the textbook claims the checker recorded (kind ``exercise``). ``docs/measured/index.md``
lists the pages. ``tests/test_docs_generated.py`` regenerates every page and fails when a committed one differs.
Framework-free: pandas and the report readers only.
"""

from __future__ import annotations

import math
import re
import statistics
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from xfbench.reports.html import ERROR_COLUMNS, Machine, load_machines, model_rows, quality
from xfbench.reports.schema import CONFIG_KEY
from xfbench.reports.writer import ReportError

#: ``reports/reference/`` of the source checkout (the CSVs are not shipped in the wheel).
REFERENCE_DIR = Path(__file__).resolve().parent / "reference"
#: Where the pages are committed, relative to the repository root.
DOCS_DIR = Path("docs") / "measured"


@dataclass(frozen=True)
class Page:
    """One generated page: ``name``.md, its title, a paragraph on what the runs are, the CSVs and their labels."""

    name: str
    title: str
    about: str
    runs: tuple[tuple[str, str], ...]  # (label, CSV file name under reports/reference/)
    machine: str = "epyc-2c"
    pair: bool = False  # two runs of one machine with the same configurations: run-to-run figures
    kind: str = "model"  # "model", "exercise" or "scaling"


#: The manifest of ``docs/measured/``.
PAGES: tuple[Page, ...] = (
    Page(
        "quick-default-isa",
        "Quick profile and held-out specs, two runs, no instruction-set cap",
        "Two fresh `tox -m bench` runs back to back (quick profile, all three frameworks), each followed by the "
        "held-out spec files `tiny`, `tinyres` and `widenet` at batch 1 (`benchmarks/diagnostics/run_pairs.sh "
        "default`). The first run calibrated the step-time prediction, the second reused that calibration.",
        (
            ("run 1", "cpu-amd-epyc-2core-issue20-default-run1.csv"),
            ("run 2", "cpu-amd-epyc-2core-issue20-default-run2.csv"),
        ),
        pair=True,
    ),
    Page(
        "quick-avx2",
        "Quick profile and held-out specs, two runs, AVX2 cap",
        "As the uncapped pair, under `ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2` "
        "(`benchmarks/diagnostics/run_pairs.sh avx2`): a capped run is another CPU's run.",
        (
            ("run 1", "cpu-amd-epyc-2core-issue20-avx2-run1.csv"),
            ("run 2", "cpu-amd-epyc-2core-issue20-avx2-run2.csv"),
        ),
        pair=True,
    ),
    Page(
        "quick-forked-default",
        "Quick profile and held-out specs, two runs: exact-shape probes timed in a forked process, no ISA cap",
        "Two fresh `tox -m bench` runs back to back (quick profile, all three frameworks, scaling suite included), "
        "each followed by the held-out spec files `tiny`, `tinyres` and `widenet` at batch 1 "
        "(`benchmarks/diagnostics/run_pairs.sh default`, kept calibrations cleared first), with the exact-shape "
        "layer probes timed in a child of the backend's timing server instead of the benchmark process (commit "
        "dcb863c). Run 1 calibrated and probed, run 2 reused (docs/time.md).",
        (
            ("run 1", "cpu-amd-epyc-2core-issue20-forked-default-run1.csv"),
            ("run 2", "cpu-amd-epyc-2core-issue20-forked-default-run2.csv"),
        ),
        pair=True,
    ),
    Page(
        "quick-forked-avx2",
        "Quick profile and held-out specs, two runs under the AVX2 cap: exact-shape probes timed in a forked process",
        "The same pair as quick-forked-default under `ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2` "
        "(`benchmarks/diagnostics/run_pairs.sh avx2`, right after it): another CPU's calibration, layer probes and "
        "memory probes (the cap is part of their key), measured in run 1 and reused in run 2 (docs/time.md).",
        (
            ("run 1", "cpu-amd-epyc-2core-issue20-forked-avx2-run1.csv"),
            ("run 2", "cpu-amd-epyc-2core-issue20-forked-avx2-run2.csv"),
        ),
        pair=True,
    ),
    Page(
        "quick-exact-default",
        "Quick profile and held-out specs, two runs: exact-shape probes and per-layer overhead, no ISA cap",
        "Two fresh `tox -m bench` runs back to back (quick profile, all three frameworks, scaling suite included), "
        "each followed by the held-out spec files `tiny`, `tinyres` and `widenet` at batch 1 "
        "(`benchmarks/diagnostics/run_pairs.sh default`, kept calibrations cleared first). Run 1 calibrated the "
        "step-time tables (with the per-layer overhead probe), timed the exact-shape layer probes (median calls) and "
        "the memory probes and kept them; run 2 reused all three (docs/time.md).",
        (
            ("run 1", "cpu-amd-epyc-2core-issue20-exact-default-run1.csv"),
            ("run 2", "cpu-amd-epyc-2core-issue20-exact-default-run2.csv"),
        ),
        pair=True,
    ),
    Page(
        "quick-exact-avx2-single",
        "One run under the AVX2 cap: exact-shape probes and per-layer overhead (time only)",
        "After the uncapped pair, one run per framework under `ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2` "
        "(`xfbench run --suite models --no-memory`, the quick catalog, then the held-out specs tiny, tinyres and "
        "widenet at batch 1), with a calibration, per-layer probe and exact-shape probes of its own (the cap is part "
        "of their key), measured in the run: another CPU's first run, time only (no memory processes, one run, "
        "not a pair).",
        (("AVX2 cap", "cpu-amd-epyc-2core-issue20-exact-avx2-single.csv"),),
    ),
    Page(
        "quick-exact-fastest-default",
        "Quick profile and held-out specs, two runs: exact-shape probes from the fastest call, no per-layer term",
        "The pair before the last two changes (commit 0da10f9): exact-shape layer probes each priced from its "
        "fastest call, no per-layer overhead (`benchmarks/diagnostics/run_pairs.sh default`, calibrations cleared "
        "first; run 1 measured, run 2 reused). Kept for the comparison: its torch rows ran a median 24% slower "
        "than predicted in both runs, and the held-out specs at batch 1 25-67% slower.",
        (
            ("run 1", "cpu-amd-epyc-2core-issue20-fastest-default-run1.csv"),
            ("run 2", "cpu-amd-epyc-2core-issue20-fastest-default-run2.csv"),
        ),
        pair=True,
    ),
    Page(
        "quick-issue23",
        "Quick profile, two runs with the issue-23 code, no instruction-set cap",
        "Two fresh `tox -m bench` runs back to back (quick profile, all three frameworks, scaling suite included). "
        "Run 1 measured the memory probes (framework overhead) and kept them, run 2 reused them (both reused "
        "the kept step-time calibration). No held-out specs in this pair.",
        (
            ("run 1", "cpu-amd-epyc-2core-issue23-run1.csv"),
            ("run 2", "cpu-amd-epyc-2core-issue23-run2.csv"),
        ),
        pair=True,
    ),
    Page(
        "graphs",
        "Graph models: ResNet, Inception and held-out graph specs",
        "`pytest benchmarks --benchmark-only --profile quick --suite models --models "
        "resnet18,inception,resnet50,resnet34` at batch 1 in each framework's env, and the held-out graph specs "
        "`tinyres` and `densecat` at batch 16. Time is one process's median of 3 rounds (this run predates the "
        "between-process interval); memory the median of 3 fresh processes.",
        (("graphs", "cpu-amd-epyc-2core-graphs.csv"),),
    ),
    Page(
        "quick-runs",
        "Quick profile: single `tox -m bench` runs",
        "Single runs of `tox -m bench` (quick profile) with earlier prediction code: the catalog's quick models "
        "(`quick`, `previous quick`), every catalog model named (`all models`), and the quick profile with "
        "`resnet18` and `inception` added (`with graphs`). Time is one process's median (these runs predate the "
        "between-process interval).",
        (
            ("quick", "cpu-amd-epyc-2core-quick.csv"),
            ("previous quick", "cpu-amd-epyc-2core-quick-2d4dd08.csv"),
            ("all models", "cpu-amd-epyc-2core-quick-all-models.csv"),
            ("with graphs", "cpu-amd-epyc-2core-quick-graphs.csv"),
        ),
    ),
    Page(
        "threads",
        "Step time with two threads and with one",
        "A `tox -m bench` run with every catalog model (2 threads, the frameworks' default on this machine), and "
        "`pytest benchmarks --suite models --no-memory` in the same envs with `OMP_NUM_THREADS=1 "
        "TF_NUM_INTRAOP_THREADS=1 TF_NUM_INTEROP_THREADS=1`, each run with its own calibration.",
        (
            ("2 threads", "cpu-amd-epyc-2core-quick-bac5aab.csv"),
            ("1 thread", "cpu-amd-epyc-1thread-quick-nomemory.csv"),
        ),
    ),
    Page(
        "custom-specs",
        "Held-out spec files: tiny, widenet, textnet",
        "The spec files of `tests/data/specs/` that no prediction rule was fitted to (the README's `tiny` example; "
        "`widenet`: odd kernels, strided convolutions, average and global pooling; `textnet`: an embedding, a "
        "per-step dense layer, two stacked LSTMs) at batch 16, 3 rounds, in each framework's env.",
        (("custom specs", "cpu-amd-epyc-2core-custom-specs.csv"),),
    ),
    Page(
        "tensorflow-flops",
        "TensorFlow's profiler counts of every catalog model",
        "`pytest benchmarks --suite models --no-memory --backend tensorflow` with every catalog model named: "
        "the profiler's count on its aligned op set against the prediction under its registry's rules.",
        (("tensorflow counts", "cpu-amd-epyc-2core-quick-tensorflow-models-nomemory.csv"),),
    ),
    Page(
        "transformers",
        "Transformers: GPT-2, BERT and held-out transformer specs",
        "`benchmarks/diagnostics/run_transformers.sh default` in each framework's bench env: `gpt2_tiny` and "
        "`bert_tiny` at the quick profile's batch 8 (64 tokens), the held-out spec files `heldout_xattn` and "
        "`heldout_lm` at batch 4, `gpt2` and `bert_base` at batch 1 (128 tokens); time from 3 processes, memory "
        "the median of 3 fresh processes. `first`: the first run, before softmax, LayerNorm and GELU were priced "
        "at measured rates and before the attention probe of the framework overhead and the tied head's third "
        "table; `final`: the run after them.",
        (
            ("first", "cpu-amd-epyc-2core-transformers-first.csv"),
            ("final", "cpu-amd-epyc-2core-transformers.csv"),
        ),
    ),
    Page(
        "scaling",
        "Data-parallel scaling: efficiency measured and predicted",
        "The scaling suite of `tox -m bench` (lenet, mlp and cnn3 at 3x64x96; N = 1 and 2 single-threaded "
        "workers; strong scaling at a global batch of 16, weak at 8 per worker; each configuration timed for at "
        "least 1 s). `before`: the scaling and all-reduce rows of run 1 of the uncapped pair (issue 20), the "
        "earlier prediction (the one-worker compute plus the fitted ring "
        "all-reduce, 5 steps per configuration); `issue 23`, `issue 23 run 1`, `issue 23 run 2`: three fresh "
        "`tox -m bench` runs (the scaling and all-reduce rows of the last two are those of the pair on the "
        "page quick-issue23) with the prediction from the run's probes (compute-only "
        "steps at N, the one-worker update, the overhead probe, the ring's bandwidth term; docs/scaling.md). "
        "Target: |predicted - measured efficiency| <= 5 points median per framework, none beyond 15.",
        (
            ("before", "cpu-amd-epyc-2core-scaling-before.csv"),
            ("issue 23", "cpu-amd-epyc-2core-issue23-bench.csv"),
            ("issue 23 run 1", "cpu-amd-epyc-2core-scaling-run1.csv"),
            ("issue 23 run 2", "cpu-amd-epyc-2core-scaling-run2.csv"),
        ),
        kind="scaling",
    ),
    Page(
        "exercises",
        "Textbook exercises: claims, predictions, measurements",
        "`xfbench exercises` in each framework's env (CPU). The claims come from the textbooks' exercises (HOML "
        "ch14/15, D2L ch4-7, the course notebook, DLWP ch5; the seed texts are not shipped with the repository) "
        "and are data in `analytics/exercise_claims.json`. Rows without a backend's measurement (the analytic "
        "rows) are left out.",
        (
            ("torch", "exercises-torch-cpu.csv"),
            ("tensorflow", "exercises-tensorflow-cpu.csv"),
            ("mxnet", "exercises-mxnet-cpu.csv"),
        ),
        kind="exercise",
    ),
)

GENERATED_NOTE = (
    "<!-- Generated by `xfbench report --markdown docs/measured` from the CSVs named below "
    "(reports/markdown.py); do not edit. -->"
)


# --- cells --------------------------------------------------------------------------------------------------


def _f(value: object) -> float:
    """A cell as a float; NaN for blank or non-numeric."""
    if value is None or value is pd.NA:
        return math.nan
    try:
        return float(str(value))
    except ValueError:
        return math.nan


def _ms(seconds: object) -> str:
    v = _f(seconds) * 1e3
    if math.isnan(v):
        return "-"
    return f"{v:.2f}" if v < 10 else f"{v:.1f}" if v < 1000 else f"{v:,.0f}"


def _mb(value: object) -> str:
    v = _f(value)
    return "-" if math.isnan(v) else f"{v / 1e6:,.2f}"


def _gflop(value: object) -> str:
    v = _f(value)
    return "-" if math.isnan(v) else f"{v / 1e9:,.4g}"


def _pct(value: object, signed: bool = True) -> str:
    v = _f(value)
    if math.isnan(v):
        return "-"
    return f"{v:+.1%}" if signed else f"{v:.1%}"


def _cell(text: object) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def short_model(model: object) -> str:
    """A spec file's stem (``tests/data/specs/tiny.yaml`` -> ``tiny``), a catalog name as it is."""
    text = str(model)
    return Path(text).stem if "/" in text or text.endswith((".yaml", ".yml", ".json")) else text


# --- reading ------------------------------------------------------------------------------------------------


def load_page_runs(page: Page, reference_dir: Path = REFERENCE_DIR) -> list[tuple[str, Machine]]:
    """(label, machine) per CSV of ``page``: one machine per CSV (every reference CSV holds one host)."""
    out = []
    for label, name in page.runs:
        machines = load_machines([reference_dir / name])
        if len(machines) != 1:
            raise ReportError(f"{name}: {len(machines)} hosts; a measured page reads one host per CSV")
        out.append((label, machines[0]))
    return out


def _models(rows: pd.DataFrame) -> pd.DataFrame:
    """The ok model rows, latest per configuration, with spec files by their stem."""
    out = model_rows(rows).copy()
    out["model"] = [short_model(m) for m in out["model"]]
    return out.drop_duplicates(subset=list(CONFIG_KEY), keep="last")


# --- sections -----------------------------------------------------------------------------------------------


def _noise_text(rows: pd.DataFrame) -> str:
    noise = rows[(rows["kind"] == "noise") & (rows["status"] == "ok")]
    times = [_f(v) for v in noise["time_median_s"] if not math.isnan(_f(v))]
    if not times:
        return "-"
    return f"{min(times) * 1e3:.2f}-{max(times) * 1e3:.2f} ms ({len(times)} probes)"


def provenance(page: Page, runs: Sequence[tuple[str, Machine]]) -> str:
    headers = ["run", "CSV", "machine", "CPU", "cores", "ISA cap", "RAM", "GPU", "frameworks", "suite commit"]
    headers += ["rows", "noise probe (512^3 GEMM)"]
    rows = []
    for label, m in runs:
        f = m.facts
        file = dict((lbl, name) for lbl, name in page.runs)[label]
        rows.append(
            [
                label,
                f"`reports/reference/{file}`",
                page.machine,
                f["CPU"],
                f["cores"],
                f["instruction-set cap"],
                f["RAM"] or "-",
                f["GPU"],
                f["frameworks"],
                f["suite commit"] or "-",
                f["rows"],
                _noise_text(m.rows),
            ]
        )
    return "## Runs\n\n" + _table(headers, rows)


def _quality_cell(rows: pd.DataFrame, metric: str, backend: str) -> str:
    q = quality(rows, metric, backend)
    if q.count == 0:
        return "-"
    verdict = "met" if q.met else "missed"
    return f"{q.median:.1%} / {q.worst:.1%} ({q.count}): {verdict}"


def quality_section(runs: Sequence[tuple[str, Machine]]) -> str:
    headers = ["run", "framework", "phase", "rows", "time median / worst", "memory median / worst"]
    headers += ["FLOPs median / worst"]
    rows = []
    for label, m in runs:
        models = _models(m.rows)
        for (backend, phase), group in models.groupby(["backend", "phase"], sort=True):
            cells = [_quality_cell(group, metric, str(backend)) for metric in ERROR_COLUMNS]
            rows.append([label, str(backend), str(phase), str(len(group)), *cells])
    text = (
        "## Prediction quality\n\n"
        "Median and worst |relative error| over the run's ok model rows (in brackets: the rows with that figure), "
        "against the targets: time median <= 15%, worst <= 40%; memory median <= 10% (torch, TensorFlow), "
        "<= 15% (MXNet), worst <= 25%; FLOPs 0.0%. Error = (predicted - measured) / measured.\n\n"
    )
    return text + _table(headers, rows) if rows else text + "No model rows with status ok."


def _stats(values: Sequence[float]) -> str:
    if not values:
        return "-"
    ordered = sorted(values)
    n = len(ordered)
    median = ordered[n // 2] if n % 2 else (ordered[n // 2 - 1] + ordered[n // 2]) / 2
    return f"{median:.1%} / {ordered[-1]:.1%}"


def run_to_run(a: pd.DataFrame, b: pd.DataFrame) -> dict[str, dict[str, object]]:
    """Per backend, the model rows of two runs paired on the configuration key: the moves of the measured and
    predicted times and the interval coverage (``benchmarks/diagnostics/run_pair.py``'s definitions)."""
    keys = list(CONFIG_KEY)
    cols = [*keys, "time_median_s", "time_lo_s", "time_hi_s", "time_predicted_s"]
    pairs = a[cols].merge(b[cols], on=keys, suffixes=("_1", "_2"))
    out: dict[str, dict[str, object]] = {}
    for backend, g in pairs.groupby("backend", sort=True):
        moved, pmoved, covered, judged = [], [], 0, 0
        for r in g.to_dict("records"):
            t1, t2 = _f(r["time_median_s_1"]), _f(r["time_median_s_2"])
            if t1 > 0 and t2 > 0:
                moved.append(abs(t2 - t1) / t1)
                for lo, hi, other in (
                    (r["time_lo_s_1"], r["time_hi_s_1"], t2),
                    (r["time_lo_s_2"], r["time_hi_s_2"], t1),
                ):
                    if not math.isnan(_f(lo)) and not math.isnan(_f(hi)):
                        judged += 1
                        covered += _f(lo) <= other <= _f(hi)
            p1, p2 = _f(r["time_predicted_s_1"]), _f(r["time_predicted_s_2"])
            if p1 > 0 and p2 > 0:
                pmoved.append(abs(p2 - p1) / p1)
        out[str(backend)] = {"paired": len(g), "moved": moved, "covered": (covered, judged), "pmoved": pmoved}
    return out


def run_to_run_section(runs: Sequence[tuple[str, Machine]]) -> str:
    (la, ma), (lb, mb) = runs
    figures = run_to_run(_models(ma.rows), _models(mb.rows))
    headers = ["framework", "paired rows", "measured time moved, median / worst (rows > 20%)"]
    headers += [f"interval covers the other run's median ({la} and {lb})", "predicted time moved, median / worst"]
    rows = []
    for backend, f in figures.items():
        moved = f["moved"]
        assert isinstance(moved, list)
        pmoved = f["pmoved"]
        assert isinstance(pmoved, list)
        covered = f["covered"]
        assert isinstance(covered, tuple)
        cov, judged = int(covered[0]), int(covered[1])
        beyond = sum(v > 0.20 for v in moved)
        coverage = f"{cov}/{judged} ({cov / judged:.0%})" if judged else "-"
        rows.append([backend, str(f["paired"]), f"{_stats(moved)} ({beyond})", coverage, _stats(pmoved)])
    return (
        f"## Run to run: {la} and {lb}\n\n"
        "The model rows of both runs paired on the configuration key. Moved = |t2 - t1| / t1; coverage counts "
        "(row, direction) pairs where one run's between-process interval `[time_lo_s, time_hi_s]` holds the "
        "other run's median (targets: measured time within 7% median, coverage at least 80%; predicted time "
        "within 3% median, 10% worst).\n\n" + _table(headers, rows)
    )


def _time_cell(r: Mapping[Any, Any]) -> str:
    lo, hi = _f(r["time_lo_s"]), _f(r["time_hi_s"])
    text = _ms(r["time_median_s"])
    return text + (f" [{_ms(lo)}..{_ms(hi)}]" if not math.isnan(lo) and not math.isnan(hi) else "")


def models_section(label: str, m: Machine) -> str:
    rows = _models(m.rows)
    if rows.empty:
        return f"## Per model: {label}\n\nNo model rows with status ok."
    rows = rows.sort_values(["backend", "model", "phase", "batch_size"], kind="mergesort")
    headers = ["model", "framework", "phase", "batch", "time ms measured [interval]", "predicted", "error"]
    headers += ["memory MB measured", "spread", "predicted", "error", "GFLOP counted", "predicted", "error"]
    out = []
    for r in rows.to_dict("records"):
        out.append(
            [
                str(r["model"]),
                str(r["backend"]),
                str(r["phase"]),
                f"{_f(r['batch_size']):.0f}",
                _time_cell(r),
                _ms(r["time_predicted_s"]),
                _pct(r["time_rel_error"]),
                _mb(r["mem_measured_bytes"]),
                _pct(r["mem_spread"], signed=False),
                _mb(r["mem_predicted_bytes"]),
                _pct(r["mem_rel_error"]),
                _gflop(r["flops_counted"]),
                _gflop(r["flops_predicted_counter"]),
                _pct(r["flops_rel_error"]),
            ]
        )
    return (
        f"## Per model: {label}\n\n"
        "Time: median step (ms) with the between-process interval where the run has one, beside the step-time "
        "prediction; memory: the first step's peak above the post-build baseline (median of fresh processes, "
        "spread = (max - min) / median) beside the process-level prediction; FLOPs: the framework counter's count "
        "beside the prediction under the counter's convention.\n\n" + _table(headers, out)
    )


_EXERCISE_FIELDS = re.compile(
    r"^(?P<source>.*?)\s*\|\s*claim: (?P<claim>.*?)\s*\|\s*predicted: (?P<predicted>.*?)\s*\|\s*"
    r"measured: (?P<measured>.*?)\s*\|\s*verdict: (?P<verdict>.*?)\s*\|\s*(?P<why>.*)$",
    re.S,
)


def exercise_fields(message: str) -> dict[str, str] | None:
    """The fields of an exercise row's message; the source without the seed file's name."""
    match = _EXERCISE_FIELDS.match(message)
    if match is None:
        return None
    fields = {k: v.strip() for k, v in match.groupdict().items()}
    fields["source"] = re.sub(r"^\S+\.txt\s*", "", fields["source"])
    return fields


def exercises_section(runs: Sequence[tuple[str, Machine]]) -> str:
    headers = ["exercise", "source", "framework", "claim", "predicted", "measured", "verdict"]
    rows = []
    for _label, m in runs:
        ex = m.rows[m.rows["kind"] == "exercise"]
        for r in ex.to_dict("records"):
            fields = exercise_fields(str(r["message"] or ""))
            if fields is None or fields["measured"] == "-":
                continue
            rows.append(
                [
                    str(r["shape"]),
                    fields["source"],
                    str(r["backend"]),
                    fields["claim"],
                    fields["predicted"],
                    fields["measured"],
                    fields["verdict"],
                ]
            )
    return "## Claims measured\n\n" + _table(headers, rows)


# --- pages --------------------------------------------------------------------------------------------------


def _scaling_rows(m: Machine) -> pd.DataFrame:
    rows = m.rows
    return rows[(rows["kind"] == "scaling") & (rows["status"] == "ok")]


def scaling_points(r: Mapping[Any, Any]) -> float:
    """predicted - measured efficiency, in points (100 x the efficiency difference)."""
    return 100.0 * (_f(r["efficiency_predicted"]) - _f(r["efficiency"]))


def scaling_section(runs: Sequence[tuple[str, Machine]]) -> str:
    """Per run and backend: median and worst |predicted - measured efficiency| of the rows with N > 1 against the
    targets, then every such row."""
    summary, detail = [], []
    for label, m in runs:
        rows = _scaling_rows(m)
        rows = rows[pd.to_numeric(rows["workers"], errors="coerce") > 1]
        for backend in sorted(set(rows["backend"])):
            sel = rows[rows["backend"] == backend]
            points = [abs(scaling_points(r)) for _, r in sel.iterrows()]
            verdicts = [str(r.get("time_within_noise", "")) for _, r in sel.iterrows()]
            judged = [v for v in verdicts if v in ("yes", "no")]
            noise = f"{judged.count('yes')}/{len(judged)}" if judged else "-"
            med, worst = statistics.median(points), max(points)
            verdict = "met" if med <= 5 and worst <= 15 else "missed"
            summary.append(
                [
                    label,
                    backend,
                    f"{med:.1f} / {worst:.1f} ({len(points)})",
                    str(sum(p <= 5 for p in points)),
                    noise,
                    verdict,
                ]
            )
            for _, r in sel.iterrows():
                interval = ""
                if not math.isnan(_f(r.get("time_lo_s"))):
                    interval = f" [{_ms(r['time_lo_s'])} .. {_ms(r['time_hi_s'])}]"
                detail.append(
                    [
                        label,
                        backend,
                        str(r["model"]),
                        str(r["scaling_mode"]),
                        str(r["workers"]),
                        _ms(r["time_median_s"]) + interval,
                        _ms(r["time_predicted_s"]),
                        f"{100 * _f(r['efficiency']):.1f}% / {100 * _f(r['efficiency_predicted']):.1f}%",
                        f"{scaling_points(r):+.1f}",
                    ]
                )
    head = _table(
        [
            "run",
            "backend",
            "abs(points) median / worst (rows)",
            "rows within 5",
            "prediction inside the quartiles",
            "target",
        ],
        summary,
    )
    rows_table = _table(
        [
            "run",
            "backend",
            "model",
            "mode",
            "N",
            "step ms measured [quartiles]",
            "predicted ms",
            "efficiency measured / predicted",
            "points",
        ],
        detail,
    )
    return "## Efficiency, predicted against measured (N > 1)\n\n" + head + "\n\n## Rows\n\n" + rows_table


def render_page(page: Page, reference_dir: Path = REFERENCE_DIR) -> str:
    """The Markdown of ``page``, from its CSVs only."""
    runs = load_page_runs(page, reference_dir)
    parts = [f"# {page.title}", GENERATED_NOTE, page.about]
    parts.append(
        f"Machine `{page.machine}`: the environment columns of each CSV below. Every figure on this page names "
        "its run; the runs are the CSVs listed under Runs."
    )
    parts.append(provenance(page, runs))
    if page.kind == "exercise":
        parts.append(exercises_section(runs))
    elif page.kind == "scaling":
        parts.append(scaling_section(runs))
    else:
        parts.append(quality_section(runs))
        if page.pair:
            parts.append(run_to_run_section(runs))
        parts += [models_section(label, m) for label, m in runs]
    return "\n\n".join(parts) + "\n"


def render_index() -> str:
    rows = [[f"[{p.title}]({p.name}.md)", ", ".join(f"`{name}`" for _label, name in p.runs)] for p in PAGES]
    return (
        "# Measured pages\n\n"
        + GENERATED_NOTE
        + "\n\nEach page is generated from committed reference CSVs (`reports/reference/`) by "
        "`xfbench report --markdown docs/measured`; `tests/test_docs_generated.py` regenerates them and fails "
        "when a committed page differs. The prose that explains the figures is in the topic pages of `docs/`.\n\n"
        + _table(["page", "made from"], rows)
        + "\n"
    )


def render_all(reference_dir: Path = REFERENCE_DIR) -> dict[str, str]:
    """File name -> Markdown of every generated page, the index included."""
    pages = {f"{p.name}.md": render_page(p, reference_dir) for p in PAGES}
    pages["index.md"] = render_index()
    return pages


def write_all(out_dir: str | Path, reference_dir: Path = REFERENCE_DIR) -> list[Path]:
    """Write every page under ``out_dir`` (created if absent); the paths written."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ReportError(f"{out}: not a directory; allowed: a directory for the Markdown pages")
    if not reference_dir.is_dir():
        raise ReportError(f"{reference_dir}: no reference CSVs here (a source checkout has them)")
    pages = render_all(reference_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
        written = []
        for name, text in pages.items():
            path = out / name
            path.write_text(text, encoding="utf-8")
            written.append(path)
    except OSError as exc:
        raise ReportError(f"{out}: cannot write ({exc.strerror}); allowed: a writable directory") from None
    return written


def main(argv: list[str] | None = None) -> int:
    """``python -m xfbench.reports.markdown DIR``: write the measured pages into DIR; exit 2 on bad input."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or args[0].startswith("-"):
        print("xfbench: error: expected one argument, the output directory (e.g. docs/measured)", file=sys.stderr)
        return 2
    try:
        paths = write_all(args[0])
    except ValueError as exc:
        print(f"xfbench: error: {exc}", file=sys.stderr)
        return 2
    for p in paths:
        print(p)
    return 0


if __name__ == "__main__":
    sys.exit(main())
