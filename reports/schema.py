"""The benchmark CSV schema, as one table: ``COLUMNS``. One row per machine and configuration (``CONFIG_KEY``).

Each column of the table has its name, its cell type (``str``, ``int``, ``float``; numbers may be blank), the
row kinds that fill it (``ROW_KINDS``), whether it belongs to the configuration key, the schema version that
added it (and the version a file of which may lack it), who fills it (the caller's row, the writer, or the
machine's fingerprint) and its meaning. Everything else is derived from the table: ``COLUMN_NAMES`` (the CSV
header, in file order), ``CONFIG_KEY``, ``ADDED_IN`` / ``OPTIONAL_IN`` and ``columns_of_version`` (what a file
of each readable version must hold), ``WRITER_COLUMNS``, the environment columns (``reports.env``), the cell
types the writer checks and ``read_report`` parses (``reports.writer``), and the README's column table
(``markdown()``; a test checks that the README's copy equals it).

The row kinds are those the code writes (``kind`` column): ``model`` (benchmarks/bench_models.py, with
benchmarks/harness/workload.py ``base_row``), ``matmul``, ``transfer``, ``logging``, ``concurrency`` and ``exercise``
(benchmarks/matmul.py, bench_matmul.py; ``exercise`` also benchmarks/exercises.py ``csv_row``), ``scaling`` and
``allreduce`` (benchmarks/scaling.py), ``calibration`` (analytics/steptime.py ``peaks_to_rows``). A column's
row kinds are the kinds whose rows set it (read from those row builders); a cell of another kind is blank.

History (bump SCHEMA_VERSION on any change to the columns or their meaning, and add a line):

* 1 - first version: time, throughput, FLOPs counted/predicted, memory measured/predicted, params,
  status, environment fingerprint.
* 2 - rows of other kinds (``kind``: model, matmul, transfer, logging, concurrency, scaling, allreduce,
  exercise) with their columns: matmul shape, transfers, GFLOP/s and fraction of a measured peak, predicted
  time, data-parallel workers, scaling mode, speedup and efficiency measured and predicted.
* 3 - ``tf32``: the TF32 matmul policy of a GPU run (on, off; blank on CPU); memory measured three ways:
  ``mem_tensor_measured_bytes`` / ``mem_tensor_predicted_bytes`` / ``mem_tensor_breakdown`` (tensor level:
  PyTorch's MemTracker beside the simulated step), ``mem_repeats`` and ``mem_spread`` (each memory figure is
  the median of N fresh processes); ``mem_measured_bytes`` became that median. Version-2 files stay readable
  (``READABLE_VERSIONS``); the columns they lack (``ADDED_IN``) read as blank. The memory columns were added
  to version 3 after version-3 files had been written (the committed reference CSVs among them): a version-3
  file may lack them (``OPTIONAL_IN``), and they read as blank there too. Rows of kind ``calibration`` (the
  peaks a run measured for the step-time prediction) were added during version 3; they fill existing columns.
* 4 - a model row's time from several processes (issue 20): ``time_median_s`` became the median of the
  processes' medians, ``time_lo_s`` / ``time_hi_s`` the between-process interval, ``time_processes`` how many;
  ``time_within_noise`` says whether the predicted time lies inside that interval; ``threads`` the intra-op
  threads; ``cpu_affinity`` the CPUs the run could use; rows of kind ``noise`` (the run's noise probe).
* 5 - data-parallel runs across nodes (issue 23): ``nodes`` and ``workers_per_node`` of a scaling or all-reduce
  row (``workers`` stays the total); rows of version 4 and before ran on one node (read as blank). Scaling rows
  fill ``time_lo_s`` / ``time_hi_s`` (the quartiles of their steps) and ``time_within_noise``.

The file layout (not a schema change; the columns and the version stay): since issue 22 the files are plain
CSV, the header first, so ``pandas.read_csv(path)``, ``csv.DictReader``, spreadsheets and DuckDB open them with
their defaults; the version is the ``schema_version`` column of every row and this history is kept here (and
in ``HISTORY_COMMENT``). Files written before began with that ``#`` history line; ``read_report`` still reads
them (it skips leading ``#`` lines).

``python -m xfbench.reports.schema --markdown`` prints the README's block (``markdown()``).

Units: seconds, bytes, FLOPs (2 per multiply-accumulate), samples/s. Empty cell = not applicable or not
measured (the ``status``/``message`` columns say why).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Literal

from xfbench.analytics.vocab import BACKENDS, DTYPES, OPTIMIZERS, PHASES

SCHEMA_VERSION = 5
# Versions read_report accepts; a file of an older one lacks the columns added since (ADDED_IN), read as blank.
READABLE_VERSIONS: tuple[int, ...] = (2, 3, 4, 5)
# The schema history in one line. Files written before issue 22 began with it (as a ``#`` line before the header,
# which read_report still skips); files are now plain CSV, and the history is kept here and in the docstring.
HISTORY_COMMENT = (
    "# xfbench benchmark report; schema history: 1 = first version, 2 = matmul/scaling/exercise rows,"
    " 3 = tf32 column, tensor-level memory and memory repeats, 4 = time over several processes, noise probe,"
    " 5 = nodes and workers per node (see reports/schema.py)"
)
STATUSES = ("ok", "skipped", "oom", "error")

# The values of the ``kind`` column, each with what its row is.
ROW_KINDS: dict[str, str] = {
    "model": "a model step",
    "matmul": "one matrix product",
    "transfer": "a bandwidth probe",
    "logging": "D2L 5.6.5 ex3",
    "concurrency": "D2L 5.6.5 ex4",
    "scaling": "a data-parallel step",
    "allreduce": "one all-reduce",
    "exercise": "a textbook claim checked",
    "calibration": "a peak measured for the step-time prediction",
    "noise": "the run's noise probe (a fixed GEMM timed at its start, middle and end)",
}

ColumnType = Literal["str", "int", "float"]
# Who fills a column: the caller's row, the writer (never the caller), or the machine's fingerprint (reports.env;
# a row's own value wins).
ColumnSource = Literal["row", "writer", "env"]


@dataclass(frozen=True)
class Column:
    """One column of the report: see the module docstring."""

    name: str
    type: ColumnType
    kinds: tuple[str, ...]
    description: str
    key: bool = False
    added_in: int = 1
    optional_in: int | None = None
    source: ColumnSource = "row"


def _col(
    name: str,
    type_: ColumnType,
    kinds: str,
    description: str,
    *,
    key: bool = False,
    added_in: int = 1,
    optional_in: int | None = None,
    source: ColumnSource = "row",
) -> Column:
    """A table row; ``kinds`` is ``all`` or row kinds separated by spaces."""
    names = tuple(ROW_KINDS) if kinds == "all" else tuple(kinds.split())
    unknown = [k for k in names if k not in ROW_KINDS]
    if unknown:
        raise ValueError(f"column {name}: unknown row kind {unknown[0]!r}; allowed: all, {', '.join(ROW_KINDS)}")
    return Column(name, type_, names, description, key, added_in, optional_in, source)


def _or(words: tuple[str, ...] | list[str]) -> str:
    return ", ".join(words[:-1]) + " or " + words[-1]


_KINDS_TEXT = ", ".join(f"{kind} ({what})" for kind, what in ROW_KINDS.items())

COLUMNS: tuple[Column, ...] = (
    _col(
        "schema_version",
        "int",
        "all",
        "schema version the row was written under (a merged file may hold older readable ones)",
        source="writer",
    ),
    _col("run_id", "str", "all", "unique id of the run (one file per run)", source="writer"),
    _col("timestamp", "str", "all", "UTC ISO-8601 time the row was written", source="writer"),
    _col("machine", "str", "all", "host name", source="env"),
    _col("kind", "str", "all", _KINDS_TEXT, key=True, added_in=2),
    _col("backend", "str", "all", f"{', '.join(BACKENDS)} (or numpy for the matmul baseline)", key=True),
    _col(
        "framework_version",
        "str",
        "model matmul transfer logging concurrency scaling allreduce exercise",
        "version of the framework",
    ),
    _col("device", "str", "all", "cpu, gpu:0, ...", key=True),
    _col("device_name", "str", "matmul transfer logging concurrency exercise", "CPU model or GPU name of that device"),
    _col("model", "str", "model scaling exercise", "catalog name or spec file name", key=True),
    _col("phase", "str", "model scaling exercise", _or(PHASES), key=True),
    _col(
        "batch_size",
        "int",
        "model logging scaling exercise",
        "samples per step; logging: the products logged",
        key=True,
    ),
    _col("dtype", "str", "all", _or(DTYPES), key=True),
    _col(
        "tf32",
        "str",
        "model matmul transfer logging concurrency scaling allreduce exercise",
        "TF32 matmul policy of the run on GPUs: on, off; blank on CPU",
        key=True,
        added_in=3,
    ),
    _col("optimizer", "str", "model scaling", f"training: {_or(list(OPTIMIZERS))}", key=True),
    _col("status", "str", "all", _or(STATUSES)),
    _col("message", "str", "all", "why a row is skipped, oom or error; warnings otherwise"),
    _col(
        "time_median_s",
        "float",
        "model matmul transfer logging concurrency scaling allreduce calibration noise",
        "median seconds per step (warm-up excluded, device synchronized); model: the median of the processes' "
        "medians (`time_processes`); calibration: seconds of the figure in `shape`; noise: the probe's median",
    ),
    _col(
        "time_lo_s",
        "float",
        "model scaling",
        "the lowest process median: with `time_hi_s`, the between-process interval of the step time (scaling: "
        "the first quartile of the steps, since schema 5)",
        added_in=4,
    ),
    _col(
        "time_hi_s",
        "float",
        "model scaling",
        "the highest process median (scaling: the third quartile of the steps)",
        added_in=4,
    ),
    _col(
        "time_processes",
        "int",
        "model",
        "processes the step was timed in (the benchmark process and forked children, one at a time)",
        added_in=4,
    ),
    _col(
        "time_iqr_s",
        "float",
        "model matmul transfer logging concurrency scaling noise",
        "interquartile range of the step time, seconds (model: over every round of every process)",
    ),
    _col("time_mean_s", "float", "model matmul transfer logging concurrency scaling", "mean seconds per step"),
    _col(
        "time_min_s",
        "float",
        "model matmul transfer logging concurrency scaling allreduce noise",
        "fastest step, seconds",
    ),
    _col("rounds", "int", "model matmul transfer logging concurrency scaling allreduce noise", "timed steps"),
    _col("throughput_samples_per_s", "float", "model scaling", "batch_size / time_median_s"),
    _col("params_counted", "int", "model scaling exercise", "parameters counted from the framework's own objects"),
    _col("params_predicted", "int", "model exercise", "analytic parameter count under this framework's convention"),
    _col("flops_counter", "str", "model", "the framework counter used (FlopCounterMode, tf-profiler, mxnet-symbol)"),
    _col("flops_counted", "float", "model exercise", "FLOPs the counter reports for one step of the whole batch"),
    _col(
        "flops_predicted_counter",
        "float",
        "model",
        "analytic FLOPs under that counter's convention (unsupported layers excluded)",
    ),
    _col("flops_rel_error", "float", "model", "(counted - predicted_counter) / predicted_counter"),
    _col(
        "flops_unsupported",
        "str",
        "model",
        "layers the counter cannot count (index:Type; their work is not in flops_counted); "
        "or `differs: <op> counted X predicted Y` where an aligned op is more than 0.1% off",
    ),
    _col(
        "flops_predicted",
        "float",
        "model matmul logging exercise",
        "analytic matmul FLOPs of one step (forward, or forward + backward for training)",
    ),
    _col(
        "achieved_flops_per_s",
        "float",
        "model matmul calibration",
        "flops_predicted / time_median_s; calibration: the GEMM or convolution rate measured",
    ),
    _col("mem_method", "str", "model", "how memory was measured: rss-hwm (CPU) or allocator+nvml (GPU)"),
    _col(
        "mem_measured_bytes",
        "float",
        "model exercise",
        "peak bytes above the post-import, post-build baseline during the first step: the median over "
        "`mem_repeats` fresh processes",
    ),
    _col(
        "mem_predicted_bytes",
        "float",
        "model exercise",
        "predicted first-step peak above that baseline: the simulated step's peak (torch, tensorflow) or the "
        "ledger's (mxnet; benchmarks/harness/rows.py PROCESS_PREDICTION) minus what the baseline holds (parameters, "
        "input batch, build-time terms), plus the framework overhead measured on a probe model",
    ),
    _col("mem_rel_error", "float", "model", "(predicted - measured) / measured"),
    _col(
        "mem_baseline_bytes",
        "float",
        "model",
        "RSS (CPU) or allocated bytes (GPU) after import and build, before the step (median)",
    ),
    _col(
        "mem_second_step_bytes",
        "float",
        "model",
        "the same peak measured for a second step, in the first repeat's process",
    ),
    _col("mem_allocator_peak_bytes", "float", "model", "framework allocator peak (GPU), bytes (median)"),
    _col("mem_nvml_bytes", "float", "model", "GPU memory NVML reports for the process, bytes (median)"),
    _col("mem_textbook_bytes", "float", "model", "the textbook lower bound (HOML ch14 ex2 method)"),
    _col(
        "mem_tensor_measured_bytes",
        "float",
        "model",
        "tensor-level peak of a steady-state step (the third, in the first repeat's process; every tensor alive, "
        "parameters and input batch included): PyTorch's MemTracker; blank where the framework exposes none "
        "(`message` says so)",
        added_in=3,
        optional_in=3,
    ),
    _col(
        "mem_tensor_predicted_bytes",
        "float",
        "model",
        "the simulated steady-state step's peak (analytics/timeline.py, the framework's rules; torch as a "
        "dispatch-mode tracker sees it)",
        added_in=3,
        optional_in=3,
    ),
    _col(
        "mem_tensor_breakdown",
        "str",
        "model",
        "MemTracker's categories at its peak: `Category=bytes;...`",
        added_in=3,
        optional_in=3,
    ),
    _col(
        "mem_repeats", "int", "model", "fresh processes each memory figure is the median of", added_in=3, optional_in=3
    ),
    _col(
        "mem_spread",
        "float",
        "model",
        "(max - min) / median of mem_measured_bytes over the repeats",
        added_in=3,
        optional_in=3,
    ),
    _col(
        "shape",
        "str",
        "matmul transfer logging concurrency scaling allreduce exercise calibration noise",
        "matmul, logging, concurrency: MxKxN; transfer: device-copy:BYTES, h2d:BYTES or d2h:BYTES; allreduce: the "
        "bytes reduced; scaling: the global batch; exercise: its id (or crossover); calibration: the figure "
        "measured (gemm:MxKxN, conv-<kernel>:MxKxN, stream:BYTES, fault:BYTES, dispatch:op, rate:<name>, "
        "step:<phase>); noise: noise:<start, middle or end>",
        key=True,
        added_in=2,
    ),
    _col(
        "transfers",
        "str",
        "matmul logging",
        "matmul: 'included' (host->device->host) or 'excluded'; logging: 'per-step-read' or 'one-read'",
        key=True,
        added_in=2,
    ),
    _col(
        "gflops_per_s",
        "float",
        "matmul calibration noise",
        "achieved GFLOP/s (10^9 FLOP/s, 2 per multiply-accumulate)",
        added_in=2,
    ),
    _col(
        "peak_fraction",
        "float",
        "matmul",
        "achieved / peak measured on this machine in this run (compute or bandwidth)",
        added_in=2,
    ),
    _col(
        "time_predicted_s",
        "float",
        "model matmul logging concurrency scaling allreduce exercise",
        "analytic time (roofline with measured peaks, or all-reduce model)",
        added_in=2,
    ),
    _col(
        "time_rel_error",
        "float",
        "model matmul logging concurrency scaling allreduce",
        "(time_predicted_s - time_median_s) / time_median_s",
        added_in=2,
    ),
    _col(
        "time_within_noise",
        "str",
        "model scaling",
        "yes when time_predicted_s lies within [time_lo_s, time_hi_s] (the error is inside the measurement's "
        "between-process interval), else no",
        added_in=4,
    ),
    _col("threads", "int", "model calibration", "intra-op threads the framework ran with", added_in=4),
    _col(
        "prediction_basis",
        "str",
        "model matmul logging concurrency scaling allreduce exercise calibration",
        "what the prediction used: `measured-peaks`, `datasheet:<device>`, `ring-model`",
        added_in=2,
    ),
    _col(
        "workers",
        "int",
        "concurrency scaling allreduce",
        "data-parallel workers (processes or devices); concurrency: 1 in sequence, 2 at the same time",
        key=True,
        added_in=2,
    ),
    _col("nodes", "int", "scaling allreduce", "machines the data-parallel workers ran on", key=True, added_in=5),
    _col(
        "workers_per_node",
        "int",
        "scaling allreduce",
        "data-parallel workers on each machine (workers = nodes x workers_per_node)",
        key=True,
        added_in=5,
    ),
    _col(
        "scaling_mode",
        "str",
        "scaling",
        "strong (fixed global batch) or weak (fixed per-worker batch)",
        key=True,
        added_in=2,
    ),
    _col("speedup", "float", "concurrency scaling", "time(N=1) / time(N), per sample for weak scaling", added_in=2),
    _col("speedup_predicted", "float", "concurrency scaling", "predicted speedup", added_in=2),
    _col("efficiency", "float", "concurrency scaling", "speedup / N", added_in=2),
    _col("efficiency_predicted", "float", "concurrency scaling", "predicted efficiency", added_in=2),
    _col("cpu_model", "str", "all", "CPU model name", source="env"),
    _col("cpu_cores", "int", "all", "logical CPU cores", source="env"),
    _col(
        "cpu_affinity",
        "str",
        "all",
        "the CPUs the run could use (sched_getaffinity), e.g. 0-1",
        source="env",
        added_in=4,
    ),
    _col(
        "cpu_isa_cap",
        "str",
        "all",
        "the instruction-set caps the run set (ONEDNN_MAX_CPU_ISA, MKL_ENABLE_INSTRUCTIONS), blank when none",
        source="env",
        added_in=4,
    ),
    _col("ram_bytes", "int", "all", "total host RAM, bytes", source="env"),
    _col("gpu_name", "str", "all", "GPU model, if any", source="env"),
    _col("gpu_memory_bytes", "int", "all", "GPU memory, bytes", source="env"),
    _col("gpu_driver", "str", "all", "GPU driver version", source="env"),
    _col("os", "str", "all", "operating system and kernel", source="env"),
    _col("python", "str", "all", "Python version", source="env"),
    _col("blas", "str", "all", "BLAS/oneDNN the framework uses, where it says", source="env"),
    _col("suite_commit", "str", "all", "git commit of xfbench", source="env"),
)

# --- derived from the table ---------------------------------------------------------------------------------
COLUMN_NAMES: tuple[str, ...] = tuple(c.name for c in COLUMNS)
COLUMN: dict[str, Column] = {c.name: c for c in COLUMNS}
# The version in which each column was added after version 2 (the oldest readable one).
ADDED_IN: dict[str, int] = {c.name: c.added_in for c in COLUMNS if c.added_in > READABLE_VERSIONS[0]}
# Columns a file of exactly that version may lack (read as blank): added to version 3 before its release, after
# version-3 files had been written.
OPTIONAL_IN: dict[str, int] = {c.name: c.optional_in for c in COLUMNS if c.optional_in is not None}
# The columns that identify a configuration when comparing machines: two rows pair only when all are equal
# (blank equals blank). Everything a run chooses and that changes the work or its speed is in it: the
# optimizer (sgd, momentum and adam steps differ), the TF32 policy, the matmul shape and transfers, the
# data-parallel workers and the scaling mode (strong and weak runs of one N differ in per-worker batch).
CONFIG_KEY: tuple[str, ...] = tuple(c.name for c in COLUMNS if c.key)
# Set by the writer on every row; a caller's row may not hold them.
WRITER_COLUMNS: tuple[str, ...] = tuple(c.name for c in COLUMNS if c.source == "writer")


def columns_of_type(type_: ColumnType) -> tuple[str, ...]:
    """The names of the columns whose cells are of ``type_``, in file order."""
    return tuple(c.name for c in COLUMNS if c.type == type_)


def columns_of_version(version: int) -> tuple[str, ...]:
    """The column names a file of schema ``version`` must have (one of ``READABLE_VERSIONS``), in file order:
    those added by that version, less the ones a file of exactly that version may lack (``optional_in``)."""
    if version not in READABLE_VERSIONS:
        readable = ", ".join(map(str, READABLE_VERSIONS))
        raise ValueError(f"schema version {version} is not readable; readable: {readable}")
    return tuple(c.name for c in COLUMNS if c.added_in <= version and c.optional_in != version)


# --- the README block ---------------------------------------------------------------------------------------
_SOURCE_TEXT = {"row": "", "writer": "; set by the writer", "env": "; the machine's fingerprint"}


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _row_kinds(c: Column) -> str:
    kinds = "all" if c.kinds == tuple(ROW_KINDS) else ", ".join(c.kinds)
    return kinds + _SOURCE_TEXT[c.source]


def _since(c: Column) -> str:
    return str(c.added_in) + ("" if c.optional_in is None else f" (optional in {c.optional_in})")


def markdown_table() -> str:
    """The README's column table: one row per column of ``COLUMNS``, in file order."""
    lines = ["| column | type | key | since | row kinds | meaning |", "|---|---|---|---|---|---|"]
    for c in COLUMNS:
        cells = [f"`{c.name}`", c.type, "yes" if c.key else "", _since(c), _row_kinds(c), _cell(c.description)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def version_sentence() -> str:
    """The README's sentence that introduces the table and states the schema version."""
    return (
        f"The CSV schema (version {SCHEMA_VERSION}; plain CSV, the header first, the version in every row's\n"
        "`schema_version` and the history in `reports/schema.py`; files of older releases begin with a `#` history\n"
        "line, which `merge` and `compare` still read; `reports/schema.py` is the source of this table, printed by\n"
        "`python -m xfbench.reports.schema --markdown`).\n"
        "*type*: what a cell holds (an `int` or `float` cell is a number or blank); *key*: one of the columns that\n"
        "identify a configuration (`CONFIG_KEY`); *since*: the schema version that added the column (*optional in\n"
        "N*: a file of version N may lack it, and it reads as blank); *row kinds*: the `kind`s of row that fill it\n"
        "(blank in the others):"
    )


def markdown() -> str:
    """The README block: the version sentence, a blank line, the column table."""
    return version_sentence() + "\n\n" + markdown_table()


def main(argv: list[str] | None = None) -> int:
    """``python -m xfbench.reports.schema [--markdown]``: print the README block; exit 2 on any other argument."""
    args = sys.argv[1:] if argv is None else argv
    bad = [a for a in args if a != "--markdown"]
    if bad:
        print(f"xfbench: error: unknown argument {bad[0]!r}; allowed: --markdown", file=sys.stderr)
        return 2
    print(markdown())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
