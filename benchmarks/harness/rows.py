"""Builds one report row for a configuration: time, FLOPs, memory, params, each beside its prediction."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from functools import cache
from pathlib import Path
from typing import Any

from xfbench.analytics.costs import tf_profiler_flops
from xfbench.analytics.predict import counter_prediction, predict, unsupported_layer_indices
from xfbench.analytics.spec import ModelSpec, SpecError
from xfbench.analytics.timeline import Timeline, simulate
from xfbench.analytics.vocab import device_kind
from xfbench.backends import get_backend
from xfbench.benchmarks.harness.measurement import Measurement
from xfbench.benchmarks.harness.workload import Config, Workload
from xfbench.reports.paths import subprocess_env

WORKER_TIMEOUT_S = 900  # per repeat
COUNTER_NAMES = {"torch": "torch", "tensorflow": "tensorflow", "mxnet": "mxnet"}
#: What ``mem_predicted_bytes`` builds on, per backend: ``simulated`` (the simulated first step's peak above the
#: baseline) or ``ledger`` (the static ledger's), either plus the probe-measured framework overhead. Chosen by
#: measurement: the quick profile (cnn3/AlexNet at 8, VGGs at 1, 3 forked repeats each) on the 2-core CPU,
#: median |error| inference / training: torch simulated 9.5% / 8.5% (worst 71%, mlp's 0.6 MB row; 26% among
#: rows above 10 MB), ledger 9.5% / 9.7% (worst 71% / 61%); TensorFlow simulated 30.0% / 12.9%, ledger 29.3% /
#: 17.0%; MXNet ledger 33.5% / 48.8%, simulated 49.1% / 60.5% (its rules are a first approximation; what its
#: step allocates beyond them is not yet isolated).
PROCESS_PREDICTION: dict[str, str] = {"torch": "simulated", "tensorflow": "simulated", "mxnet": "ledger"}
DEFAULT_MEMORY_REPEATS = 3
#: ``--memory-repeats`` reaches the memory workers through this variable (set by the benchmark conftest).
MEMORY_REPEATS_ENV = "XFBENCH_MEMORY_REPEATS"


def memory_repeats() -> int:
    """Processes per memory figure: ``XFBENCH_MEMORY_REPEATS`` (a positive integer), else 3."""
    return _positive_env(MEMORY_REPEATS_ENV, DEFAULT_MEMORY_REPEATS)


def _positive_env(name: str, default: int) -> int:
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    if not text.isdigit() or int(text) <= 0:
        raise ValueError(f"{name}={text!r}; allowed: a positive integer")
    return int(text)


#: Forked repeats of one CPU figure that run at once (``XFBENCH_MEMORY_PARALLEL``, default 2). Each child's
#: peak is its own kernel high-water mark, so running two side by side changes their time, not their figures.
MEMORY_PARALLEL_ENV = "XFBENCH_MEMORY_PARALLEL"
DEFAULT_MEMORY_PARALLEL = 2
#: ``XFBENCH_MEMORY_SERVER=0``: a fresh worker process per CPU configuration instead of the backend's memory
#: server (:class:`benchmarks.harness.worker.MemoryServer`), e.g. to check that both give the same figures.
MEMORY_SERVER_ENV = "XFBENCH_MEMORY_SERVER"


def memory_parallel() -> int:
    return _positive_env(MEMORY_PARALLEL_ENV, DEFAULT_MEMORY_PARALLEL)


def _with_notes(result: dict[str, Any]) -> dict[str, Any]:
    notes = [result.get("message", ""), result.get("tensor_message", "")]
    result["message"] = "; ".join(n for n in notes if n)
    if not result["message"]:
        del result["message"]
    return result


def memory_in_fresh_process(
    config: Config,
    memory_limit: str | None = None,
    repeats: int | None = None,
    *,
    tensor: bool = True,
    timeline: str | None = None,
    use_server: bool = True,
) -> dict[str, Any]:
    """Runs :mod:`benchmarks.harness.worker` for ``config``; returns its JSON result (status ok/oom/error).

    Each figure is the median of ``repeats`` fresh processes (default :func:`memory_repeats`), ``spread``
    beside it; ``tensor``: also the tensor-level figure (torch: MemTracker), whose absence on a backend is
    said in ``message``; ``timeline``: a JSON path for the step's RSS/allocator timeline (``xfbench memory``).

    On the CPU the repeats are children forked from the backend's memory server, a process that has imported
    the framework once for the whole run (:func:`benchmarks.harness.worker.serve`), :func:`memory_parallel` at a time;
    elsewhere (GPU, a timeline, ``use_server=False``, ``XFBENCH_MEMORY_SERVER=0``) a worker process is started for
    the configuration."""
    from xfbench.benchmarks.harness.worker import can_serve, served, worker_exit_result

    n = memory_repeats() if repeats is None else repeats
    argv = [*config.worker_args(), "--repeats", str(n), "--repeat-timeout", str(WORKER_TIMEOUT_S)]
    argv += ["--parallel", str(memory_parallel())]
    if memory_limit:
        argv += ["--memory-limit", memory_limit]
    if not tensor:
        argv.append("--no-tensor")
    if timeline:
        argv += ["--timeline", timeline]
    timeout = WORKER_TIMEOUT_S * (n + 2)
    if (
        use_server
        and can_serve(config.device, config.backend, timeline)
        and os.environ.get(MEMORY_SERVER_ENV, "1") != "0"
    ):
        return _with_notes(served(config.backend, argv, timeout))
    cmd = [sys.executable, "-m", "xfbench.benchmarks.harness.worker", *argv]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=subprocess_env(), timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return {"status": "error", "message": f"memory worker timed out after {timeout} s"}
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if lines:
        return _with_notes(dict(json.loads(lines[-1])))
    return worker_exit_result(proc.returncode, (proc.stderr.strip().splitlines() or ["no output"])[-1][:300])


PROBES = Path(__file__).resolve().parent.parent / "probes"  # benchmarks/probes: package data, shipped in the wheel


def probe_family(spec: ModelSpec) -> str:
    """Which probe model stands for ``spec``'s kernels: ``conv``, ``lstm`` or ``dense``."""
    types = {layer.type for layer in spec.layers}
    return "conv" if "Conv2D" in types else "lstm" if "LSTM" in types else "dense"


@cache
def framework_overhead(backend: str, device: str, phase: str, optimizer: str, family: str) -> int | None:
    """A framework's fixed first-step memory (bytes), measured on a tiny model in a fresh process.

    This is the ledger's ``framework_overhead`` term: thread pools, JIT-compiled kernels, lazy
    initialisation and the allocator's first arenas, which a first step pays whatever the model's size.
    It depends on which kernels run, so the probe has the model's kernel family (conv, LSTM or dense
    only: ``benchmarks/probes/``). Measured once per (backend, device, phase, optimizer, family) per run.
    """
    probe = Config(backend, str(PROBES / f"{family}.json"), phase, 8, device, "float32", optimizer)
    # One process: the probes' figures are a few MB and varied by at most 0.4 MB over 3 repeats (every framework,
    # both phases, quick-profile run on the 2-core CPU), while each repeat costs a build and, in TensorFlow, a
    # trace (a TensorFlow probe took 24-37 s with 3 repeats there, a torch one 4-12 s).
    # A worker of its own, not the memory server: the probe's figure is a fresh process's first step, which
    # pays the framework's lazily imported modules; a child of the server that has already served a
    # tensor-level (MemTracker) request inherits some of them (suspected, not yet isolated). Measured (torch,
    # conv probe, quick profile): served, the training overhead read 0.50 MB where fresh workers read 0.94 and
    # 1.14 MB in two runs, inference 0.10 vs 0.13 and 0.24 MB, while the models' own figures agreed within 0.2%
    # (median) either way.
    result = memory_in_fresh_process(probe, repeats=1, tensor=False, use_server=False)
    measured = result.get("measured_bytes")
    if result.get("status") != "ok" or measured is None:
        return None
    return max(int(measured) - _step_bytes(probe), 0)


def framework_threads() -> int:
    """The intra-op threads the frameworks run a benchmark step with: their default, this machine's logical cores
    (the rows record it as ``cpu_cores``); the simulated step takes it as an input."""
    return os.cpu_count() or 1


def _prediction(config: Config) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return predict(
            config.spec(), config.batch_size, config.dtype, config.optimizer, config.backend, framework_threads()
        )


def _built_terms(config: Config) -> set[str]:
    """What exists before the measured step, in the baseline: parameters, the input batch, and whatever the
    framework allocates at build time (MXNet: the gradient buffers)."""
    return {"parameters", "input_batch", *get_backend(config.backend).BUILT_LEDGER_TERMS}


def ledger_step_bytes(config: Config) -> int:
    """The static ledger's peak for the phase minus what the baseline holds."""
    pred = _prediction(config)
    ledger = pred.training if config.phase == "training" else pred.inference
    before = _built_terms(config)
    return ledger.peak_bytes - sum(value for name, value in ledger.terms if name in before)


def simulated_timeline(config: Config, *, tracked: bool = False) -> Timeline | None:
    """The simulated first step of ``config`` (None where the simulator cannot lower the spec). ``tracked``: the
    steady-state step the worker's MemTracker measures, as a dispatch-mode tracker sees a torch step."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return simulate(
                config.spec(),
                config.batch_size,
                config.phase,
                config.dtype,
                config.optimizer,
                config.backend,
                device=device_kind(config.device),
                warm=tracked,
                dispatch_mode=tracked and config.backend == "torch",
                threads=framework_threads(),
                kernel_scratch=not tracked,
            )
    except (SpecError, ValueError):
        return None


def simulated_step_bytes(config: Config) -> int | None:
    """The simulated first step's peak minus what the baseline holds (the categories of ``_built_terms``
    alive at the peak)."""
    timeline = simulated_timeline(config)
    if timeline is None:
        return None
    before = _built_terms(config)
    return timeline.peak_bytes - sum(value for name, value in timeline.breakdown if name in before)


def _step_bytes(config: Config) -> int:
    """The process-level prediction's model part (:data:`PROCESS_PREDICTION`; the ledger where the simulator
    cannot lower the spec)."""
    if PROCESS_PREDICTION.get(config.backend) == "simulated":
        simulated = simulated_step_bytes(config)
        if simulated is not None:
            return simulated
    return ledger_step_bytes(config)


def prediction_columns(config: Config) -> dict[str, Any]:
    pred = _prediction(config)
    step_bytes = _step_bytes(config)
    flops = pred.forward_flops + (pred.backward_flops if config.phase == "training" else 0)
    tensor = simulated_timeline(config, tracked=True)
    return {
        "params_predicted": pred.params,
        "flops_predicted": flops,
        "mem_predicted_bytes": step_bytes,
        "mem_textbook_bytes": (
            pred.textbook_training_bytes if config.phase == "training" else pred.textbook_inference_bytes
        ),
        "mem_tensor_predicted_bytes": None if tensor is None else tensor.peak_bytes,
    }


# |counted - predicted| / predicted above this flags the row's differing ops in ``flops_unsupported``.
FLOPS_TOLERANCE = 1e-3


def counter_expectation(
    spec: ModelSpec, batch_size: int, backend: str, phase: str, skip: tuple[int, ...] = ()
) -> tuple[int, dict[str, int] | None]:
    """The analytic FLOPs a backend's counter should report (over its ``ALIGNED_OPS``), and per op where known.

    TensorFlow is predicted op by op (:func:`analytics.costs.tf_profiler_flops`: forward and gradient ops
    under the profiler's own registry rules); PyTorch and MXNet count matmuls, predicted as a total.
    """
    if backend == "tensorflow":
        by_op = tf_profiler_flops(spec, batch_size, phase, skip)
        return sum(by_op.values()), by_op
    return counter_prediction(spec, batch_size, COUNTER_NAMES[backend], phase, skip), None


def flop_columns(work: Workload) -> dict[str, Any]:
    """The FLOP columns of a row. ``flops_counted`` is the counter's count over the backend's ``ALIGNED_OPS``
    (its whole total where that is ``None``), ``flops_counter`` names that op set, and ``flops_rel_error``
    is computed from exactly ``flops_counted``. Where the per-op prediction and the count disagree by more
    than :data:`FLOPS_TOLERANCE`, ``flops_unsupported`` names each differing op with both figures."""
    cfg = work.config
    count = work.backend.count_flops(work.model, work.spec, cfg.batch_size, cfg.phase)
    skip = unsupported_layer_indices(work.spec, tuple(count.unsupported))
    expected, expected_by_op = counter_expectation(work.spec, cfg.batch_size, cfg.backend, cfg.phase, skip)
    ops = work.backend.ALIGNED_OPS
    counted = count.total if ops is None else sum(v for k, v in count.by_op.items() if k in ops)
    rel_error = (counted - expected) / expected if expected else None
    notes = list(count.unsupported)
    if expected_by_op is not None and ops is not None and (rel_error is None or abs(rel_error) > FLOPS_TOLERANCE):
        differing = [
            f"{op} counted {count.by_op.get(op, 0)} predicted {expected_by_op.get(op, 0)}"
            for op in ops
            if count.by_op.get(op, 0) != expected_by_op.get(op, 0)
        ]
        if differing:
            notes.append("differs: " + ", ".join(differing))
    return {
        "flops_counter": count.counter if ops is None else f"{count.counter} ({'+'.join(ops)})",
        "flops_counted": counted,
        "flops_predicted_counter": expected,
        "flops_rel_error": rel_error,
        "flops_unsupported": ";".join(notes),
    }


def memory_columns(result: dict[str, Any], predicted: int | None) -> dict[str, Any]:
    """The measured memory columns of a row from a worker result (:func:`memory_in_fresh_process`)."""
    measured = result.get("measured_bytes")
    return {
        "mem_method": result.get("method", ""),
        "mem_measured_bytes": measured,
        "mem_baseline_bytes": result.get("baseline_bytes"),
        "mem_second_step_bytes": result.get("second_step_bytes"),
        "mem_allocator_peak_bytes": result.get("allocator_peak_bytes"),
        "mem_nvml_bytes": result.get("nvml_bytes"),
        "mem_rel_error": (predicted - measured) / measured if measured and predicted is not None else None,
        "mem_tensor_measured_bytes": result.get("tensor_measured_bytes"),
        "mem_tensor_breakdown": result.get("tensor_breakdown", ""),
        "mem_repeats": result.get("repeats"),
        "mem_spread": result.get("spread"),
    }


def time_columns(timing: Measurement | Any, batch_size: int) -> dict[str, Any]:
    """The time columns of a model row (:meth:`Measurement.columns`) and its throughput, samples per second.

    ``timing``: a :class:`Measurement`, or pytest-benchmark's ``Stats`` (``benchmark.stats.stats``), whose raw
    rounds (``data``) become one (:meth:`Measurement.from_stats`)."""
    m = timing if isinstance(timing, Measurement) else Measurement.from_stats(timing)
    return {**m.columns(), "throughput_samples_per_s": batch_size / m.median if m.median > 0 else None}
