"""The benchmark CSV schema. One row per machine and configuration (``CONFIG_KEY``).

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
  file may lack them (``OPTIONAL_IN``), and they read as blank there too.

``python -m xfbench.reports.schema --markdown`` prints the README's column table (``markdown()``); a test
checks that the README's copy equals it.

Units: seconds, bytes, FLOPs (2 per multiply-accumulate), samples/s. Empty cell = not applicable or not
measured (the ``status``/``message`` columns say why).
"""

from __future__ import annotations

import sys

SCHEMA_VERSION = 3
# Versions read_report accepts; a file of an older one lacks the columns added since (ADDED_IN), read as blank.
READABLE_VERSIONS: tuple[int, ...] = (2, 3)
HISTORY_COMMENT = (
    "# xfbench benchmark report; schema history: 1 = first version, 2 = matmul/scaling/exercise rows,"
    " 3 = tf32 column, tensor-level memory and memory repeats (see reports/schema.py)"
)
STATUSES = ("ok", "skipped", "oom", "error")

# (column, description) - the README's column table is generated from this list.
COLUMNS: tuple[tuple[str, str], ...] = (
    ("schema_version", "schema version the row was written under (a merged file may hold older readable ones)"),
    ("run_id", "unique id of the run (one file per run)"),
    ("timestamp", "UTC ISO-8601 time the row was written"),
    ("machine", "host name"),
    ("kind", "model (a model step), matmul, transfer, logging, concurrency, scaling, allreduce, exercise"),
    ("backend", "torch, tensorflow, mxnet (or numpy for the matmul baseline)"),
    ("framework_version", "version of the framework"),
    ("device", "cpu, gpu:0, ..."),
    ("device_name", "CPU model or GPU name of that device"),
    ("model", "catalog name or spec file name"),
    ("phase", "inference or training"),
    ("batch_size", "samples per step"),
    ("dtype", "float32, float16 or bfloat16"),
    ("tf32", "TF32 matmul policy of the run on GPUs: on, off; blank on CPU"),
    ("optimizer", "training: sgd, momentum or adam"),
    ("status", "ok, skipped, oom or error"),
    ("message", "why a row is skipped, oom or error; warnings otherwise"),
    ("time_median_s", "median seconds per step (warm-up excluded, device synchronized)"),
    ("time_iqr_s", "interquartile range of the step time, seconds"),
    ("time_mean_s", "mean seconds per step"),
    ("time_min_s", "fastest step, seconds"),
    ("rounds", "timed steps"),
    ("throughput_samples_per_s", "batch_size / time_median_s"),
    ("params_counted", "parameters counted from the framework's own objects"),
    ("params_predicted", "analytic parameter count under this framework's convention"),
    ("flops_counter", "the framework counter used (FlopCounterMode, tf-profiler, mxnet-symbol)"),
    ("flops_counted", "FLOPs the counter reports for one step of the whole batch"),
    ("flops_predicted_counter", "analytic FLOPs under that counter's convention (unsupported layers excluded)"),
    ("flops_rel_error", "(counted - predicted_counter) / predicted_counter"),
    (
        "flops_unsupported",
        "layers the counter cannot count (index:Type; their work is not in flops_counted); "
        "or `differs: <op> counted X predicted Y` where an aligned op is more than 0.1% off",
    ),
    ("flops_predicted", "analytic matmul FLOPs of one step (forward, or forward + backward for training)"),
    ("achieved_flops_per_s", "flops_predicted / time_median_s"),
    ("mem_method", "how memory was measured: rss-hwm (CPU) or allocator+nvml (GPU)"),
    (
        "mem_measured_bytes",
        "peak bytes above the post-import, post-build baseline during the first step: the median over "
        "`mem_repeats` fresh processes",
    ),
    (
        "mem_predicted_bytes",
        "predicted first-step peak above that baseline: the simulated step's peak (torch, tensorflow) or the "
        "ledger's (mxnet; benchmarks/measure.py PROCESS_PREDICTION) minus what the baseline holds (parameters, "
        "input batch, build-time terms), plus the framework overhead measured on a probe model",
    ),
    ("mem_rel_error", "(predicted - measured) / measured"),
    ("mem_baseline_bytes", "RSS (CPU) or allocated bytes (GPU) after import and build, before the step (median)"),
    ("mem_second_step_bytes", "the same peak measured for a second step, in the first repeat's process"),
    ("mem_allocator_peak_bytes", "framework allocator peak (GPU), bytes (median)"),
    ("mem_nvml_bytes", "GPU memory NVML reports for the process, bytes (median)"),
    ("mem_textbook_bytes", "the textbook lower bound (HOML ch14 ex2 method)"),
    (
        "mem_tensor_measured_bytes",
        "tensor-level peak of a steady-state step (the third, in the first repeat's process; every tensor alive, "
        "parameters and input batch included): PyTorch's MemTracker; blank where the framework exposes none "
        "(`message` says so)",
    ),
    (
        "mem_tensor_predicted_bytes",
        "the simulated steady-state step's peak (analytics/timeline.py, the framework's rules; torch as a "
        "dispatch-mode tracker sees it)",
    ),
    ("mem_tensor_breakdown", "MemTracker's categories at its peak: `Category=bytes;...`"),
    ("mem_repeats", "fresh processes each memory figure is the median of"),
    ("mem_spread", "(max - min) / median of mem_measured_bytes over the repeats"),
    ("shape", "matmul: MxKxN; scaling: the global batch; exercise: its id"),
    ("transfers", "matmul: 'included' (host->device->host) or 'excluded'"),
    ("gflops_per_s", "achieved GFLOP/s (10^9 FLOP/s, 2 per multiply-accumulate)"),
    ("peak_fraction", "achieved / peak measured on this machine in this run (compute or bandwidth)"),
    ("time_predicted_s", "analytic time (roofline with measured peaks, or all-reduce model)"),
    ("time_rel_error", "(time_predicted_s - time_median_s) / time_median_s"),
    ("prediction_basis", "what the prediction used: `measured-peaks`, `datasheet:<device>`, `ring-model`"),
    ("workers", "data-parallel workers (processes or devices)"),
    ("scaling_mode", "strong (fixed global batch) or weak (fixed per-worker batch)"),
    ("speedup", "time(N=1) / time(N), per sample for weak scaling"),
    ("speedup_predicted", "predicted speedup"),
    ("efficiency", "speedup / N"),
    ("efficiency_predicted", "predicted efficiency"),
    ("cpu_model", "CPU model name"),
    ("cpu_cores", "logical CPU cores"),
    ("ram_bytes", "total host RAM, bytes"),
    ("gpu_name", "GPU model, if any"),
    ("gpu_memory_bytes", "GPU memory, bytes"),
    ("gpu_driver", "GPU driver version"),
    ("os", "operating system and kernel"),
    ("python", "Python version"),
    ("blas", "BLAS/oneDNN the framework uses, where it says"),
    ("suite_commit", "git commit of xfbench"),
)
COLUMN_NAMES: tuple[str, ...] = tuple(c for c, _ in COLUMNS)
# The version in which each column was added after version 2 (the oldest readable one).
ADDED_IN: dict[str, int] = {
    "tf32": 3,
    "mem_tensor_measured_bytes": 3,
    "mem_tensor_predicted_bytes": 3,
    "mem_tensor_breakdown": 3,
    "mem_repeats": 3,
    "mem_spread": 3,
}

# Columns a file of exactly that version may lack (read as blank): added to version 3 before its release, after
# version-3 files had been written.
OPTIONAL_IN: dict[str, int] = {
    "mem_tensor_measured_bytes": 3,
    "mem_tensor_predicted_bytes": 3,
    "mem_tensor_breakdown": 3,
    "mem_repeats": 3,
    "mem_spread": 3,
}

# The columns that identify a configuration when comparing machines: two rows pair only when all are equal
# (blank equals blank). Everything a run chooses and that changes the work or its speed is here: the
# optimizer (sgd, momentum and adam steps differ), the TF32 policy, the matmul shape and transfers, the
# data-parallel workers and the scaling mode (strong and weak runs of one N differ in per-worker batch).
CONFIG_KEY: tuple[str, ...] = (
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
    "scaling_mode",
)


def columns_of_version(version: int) -> tuple[str, ...]:
    """The column names a file of schema ``version`` must have (one of ``READABLE_VERSIONS``), in file order:
    those added by that version, less the ones a file of exactly that version may lack (``OPTIONAL_IN``)."""
    if version not in READABLE_VERSIONS:
        readable = ", ".join(map(str, READABLE_VERSIONS))
        raise ValueError(f"schema version {version} is not readable; readable: {readable}")
    return tuple(
        c for c in COLUMN_NAMES if ADDED_IN.get(c, READABLE_VERSIONS[0]) <= version and OPTIONAL_IN.get(c) != version
    )


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def markdown_table() -> str:
    """The README's column table: one row per column of ``COLUMNS``, in order."""
    lines = ["| column | meaning |", "|---|---|"]
    lines += [f"| `{name}` | {_cell(meaning)} |" for name, meaning in COLUMNS]
    return "\n".join(lines)


def version_sentence() -> str:
    """The README's sentence that introduces the table and states the schema version."""
    return (
        f"The CSV schema (version {SCHEMA_VERSION}; the first line of each file is a `#` history comment;\n"
        "`reports/schema.py` is the source of this table, printed by `python -m xfbench.reports.schema --markdown`):"
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
