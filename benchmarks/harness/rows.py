"""Builds one report row for a configuration: time, FLOPs, memory, params, each beside its prediction."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import warnings
from functools import cache
from pathlib import Path
from typing import Any

from xfbench.analytics.costs import tf_profiler_flops
from xfbench.analytics.memory import mxnet_onednn_layout_bytes, mxnet_onednn_rnn_bytes
from xfbench.analytics.predict import counter_prediction, predict, unsupported_layer_indices
from xfbench.analytics.spec import ModelSpec, SpecError
from xfbench.analytics.timeline import Timeline, simulate
from xfbench.analytics.timeline_rules import mxnet_plan_bytes, onednn_channel_block
from xfbench.analytics.vocab import device_kind
from xfbench.backends import get_backend
from xfbench.benchmarks.harness.measurement import Measurement
from xfbench.benchmarks.harness.workload import Config, Workload
from xfbench.reports.paths import subprocess_env

WORKER_TIMEOUT_S = 900  # per repeat
COUNTER_NAMES = {"torch": "torch", "tensorflow": "tensorflow", "mxnet": "mxnet"}
#: What ``mem_predicted_bytes`` builds on, per backend: ``simulated`` (the simulated first step's peak above the
#: baseline), ``planned`` (MXNet: the static memory plan of the simulated step plus oneDNN's blocked-layout copies,
#: :func:`mxnet_planned_step_bytes`) or ``ledger`` (the static ledger's), each plus the probe-measured framework
#: overhead. Chosen by measurement: the quick profile (cnn3/AlexNet at 8, VGGs at 1, 3 forked repeats each) on the
#: 2-core CPU, median |error| inference / training: torch simulated 9.5% / 8.5% (worst 71%, mlp's 0.6 MB row; 26%
#: among rows above 10 MB), ledger 9.5% / 9.7% (worst 71% / 61%); TensorFlow simulated 30.0% / 12.9%, ledger 29.3% /
#: 17.0%; MXNet ledger 33.5% / 48.8%, simulated 49.1% / 60.5%; MXNet planned (issue 20, the catalog with ResNet-18
#: and the inception model, the custom specs at batches 8 and 32, AVX-512 and an AVX2 cap): see
#: :func:`analytics.timeline_rules.mxnet_onednn_layout_elems`.
PROCESS_PREDICTION: dict[str, str] = {"torch": "simulated", "tensorflow": "simulated", "mxnet": "planned"}
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


#: Probes that measure one more layer of a type than the conv probe has (TensorFlow's first execution holds memory
#: per op of its graph: issue 20): layer type -> (probe file, layers of that type in ``conv.json``).
LAYER_PROBES: dict[str, tuple[str, int]] = {
    "Conv2D": ("conv2", 1),
    "BatchNorm": ("bn", 0),
    "MultiHeadAttention": ("attn2", 1),
}
#: The per-layer probes each base probe reads against it (a conv model's convs and BatchNorms; a transformer's
#: attention blocks: ``attn2`` is the ``attn`` probe with a second block).
BASE_LAYER_PROBES: dict[str, tuple[str, ...]] = {"conv": ("Conv2D", "BatchNorm"), "attn": ("MultiHeadAttention",)}
#: The backends whose overhead adds the per-layer probes' cost (measured where it matters: TensorFlow, below).
PER_LAYER_OVERHEAD_BACKENDS = ("tensorflow",)


#: The backends whose overhead adds a probe of the model's largest dense layer (MKL's SGEMM buffers, below).
GEMM_PROBE_BACKENDS = ("torch",)
#: Layer types with weights: a dense layer behind one of them computes its input's gradient in training.
WEIGHTED_TYPES = (
    *("Conv2D", "Dense", "LSTM", "Embedding", "BatchNorm"),
    *("LayerNorm", "MultiHeadAttention", "PositionEmbedding"),
)
#: The units of the GEMM probe's baseline: the same probe with a dense layer whose GEMMs take no MKL buffers.
GEMM_SMALL_UNITS = 2


def probe_family(spec: ModelSpec) -> str:
    """Which probe model stands for ``spec``'s kernels: ``conv``, ``lstm``, ``attn`` (a transformer: any
    MultiHeadAttention) or ``dense``; the layers it has beyond its base probe's, for the per-layer probes
    (:data:`LAYER_PROBES`, :data:`BASE_LAYER_PROBES`), e.g. ResNet-18's ``conv:Conv2D=19,BatchNorm=20``,
    gpt2_tiny's ``attn:MultiHeadAttention=1``; and, after ``;gemm=``, the input shape and units of its largest
    dense layer (by weight), for the GEMM probe (the mlp: ``dense;gemm=784>256``; ``gemmdx`` where a layer with
    weights comes before it, e.g. LeNet's ``conv:Conv2D=1;gemmdx=400>120``)."""
    from xfbench.analytics.layers import Dense
    from xfbench.analytics.shapes import layer_input_shapes

    types = [layer.type for layer in spec.layers]
    base = (
        "conv"
        if "Conv2D" in types
        else "lstm"
        if "LSTM" in types
        else "attn"
        if "MultiHeadAttention" in types
        else "dense"
    )
    extra = [
        f"{t}={types.count(t) - LAYER_PROBES[t][1]}"
        for t in BASE_LAYER_PROBES.get(base, ())
        if types.count(t) > LAYER_PROBES[t][1]
    ]
    family = f"{base}:{','.join(extra)}" if extra else base
    dense = [
        (shape[-1] * layer.units, i, shape, layer.units)
        for i, (layer, (shape, *_)) in enumerate(zip(spec.layers, layer_input_shapes(spec)))
        if isinstance(layer, Dense)
    ]
    if dense:
        _, index, shape, units = max(dense, key=lambda d: (d[0], -d[1]))
        # its input wants a gradient where a layer with weights comes before it (the input-gradient GEMM runs)
        dx = any(layer.type in WEIGHTED_TYPES for layer in spec.layers[:index])
        family += f";{'gemmdx' if dx else 'gemm'}={'x'.join(map(str, shape))}>{units}"
    return family


def _probe_path(name: str) -> Path:
    """The probe model file: ``benchmarks/probes/<name>.json``, or for ``gemm-<shape>-<units>`` a dense layer on that
    input shape (flattened first where it is an image), ``gemmdx-...`` the same behind a BatchNorm (the dense
    layer's input then wants a gradient), written on first use under ``$TMPDIR``."""
    if not name.startswith(("gemm-", "gemmdx-")):
        return PROBES / f"{name}.json"
    kind, shape_text, units = name.split("-")
    shape = [int(v) for v in shape_text.split("x")]
    path = Path(os.environ.get("TMPDIR", "/tmp")) / "xfbench-probes" / f"{name}.json"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        # a BatchNorm first, so that the dense layer's input wants a gradient as in the model (its input-gradient
        # GEMM takes MKL buffers of its own: measured, torch_conv_scratch.py --model heldout_graydense: the
        # backward ``mm`` of the input gradient holds 6.1 MB, the weight gradient's none)
        layers: list[dict[str, Any]] = [{"type": "BatchNorm"}] if kind == "gemmdx" else []
        layers += [{"type": "Flatten"}] if len(shape) > 2 else []
        layers.append({"type": "Dense", "units": int(units)})
        spec = {"name": f"probe-{name}", "source": "xfbench: one dense layer (issue 20)", "input_shape": shape}
        path.write_text(json.dumps({**spec, "layers": layers}))
    return path


#: The batch of the overhead probe where the caller names none (the probes' batch before issue 20).
PROBE_BATCH = 8


@cache
def framework_overhead(
    backend: str, device: str, phase: str, optimizer: str, family: str, batch: int | None = None
) -> int | None:
    """A framework's fixed first-step memory (bytes), measured on a tiny model in a fresh process.

    This is the ledger's ``framework_overhead`` term: thread pools, JIT-compiled kernels, lazy
    initialisation and the allocator's first arenas, which a first step pays whatever the model's size.
    It depends on which kernels run, so the probe has the model's kernel family (conv, LSTM or dense
    only: ``benchmarks/probes/``), and on the batch, so the probe runs at the row's ``batch`` (default
    :data:`PROBE_BATCH`). Measured once per (backend, device, phase, optimizer, family, batch) per run, in the
    run's own environment (CPU, ISA cap, threads, library versions): what it measures travels with the run.
    ``family`` is :func:`probe_family`'s: in a TensorFlow training step each layer beyond the conv probe's adds
    what one more such layer adds to the probe (``conv2.json``, ``bn.json``, at the same batch).

    Why the batch (issue 20): MXNet 1.9.1's first inference step on the AVX-512 CPU holds 0.46-1.03 MB beyond
    the probe's step at batches 1, 2 and 8 and 4.15-4.52 MB at batches 16, 32 and 64 (conv and dense probes, one
    fresh process each; training 4.8-5.2 MB at every batch), and TensorFlow's 2.0 MB at batch 1 and 5.4-7.3 MB
    from batch 2 on: a fixed cost that switches with the batch, which a batch-8 probe missed (MXNet mlp at batch
    64 measured 4.43 MB against 1.03 predicted). Not itemized (memray's owners at both batches would name it).
    The GEMM probe (torch): the model's largest dense layer behind a BatchNorm, at the row's batch and phase, less
    the same probe with a 2-unit dense layer (:data:`GEMM_SMALL_UNITS`). MKL's SGEMM keeps per-thread packing
    buffers from its first call, sized by its blocking for the GEMM's shape (memray: ``mkl_serv_allocate`` in
    ``mkl_blas_def_sgemm_getbufs``; the README's "What the first step holds" table), which the 8-unit dense
    probe's GEMMs do not take: at batch 64 the dense probe holds 0.04 MB (inference) and 0.31 MB (training) beyond
    its step, a 784 -> 128 layer 0.30 and 0.98 MB; in the held-out graydense spec (training, batch 8) the input
    gradient's ``mm`` of its 3872 -> 192 layer holds 6.1 MB (``torch_conv_scratch.py --modes ops``), which is why
    the probe of a dense layer with weights before it has a BatchNorm first (its input then wants a gradient; at
    batch 1 torch's BatchNorm refuses a training step, and the probe adds nothing). The buffers count in the
    first step's peak where that comes after the GEMM: in training (the backward follows every forward GEMM) and
    in the inference of a model without convs; a conv model's inference peaks in its convs, before its dense
    head (AlexNet: the fc layers' 6.3 MB of buffers come after the peak, memray; the README's torch notes).
    Why per layer (TensorFlow training): one more BatchNorm adds 1.8 MB to the conv probe's first training step
    (batches 1 and 8), one more conv 0.9-1.1 MB (TensorFlow 2.21, oneDNN ops on): the first execution's memory
    grows with the graph (the README's issue-19 note on Keras 3's decomposed BatchNorm). Not in inference: there
    the probes give 0.3-0.6 MB per layer, but ResNet-18 and the inception model at batch 1 hold 0.12-0.13 MB per
    layer beyond their simulated step and the batch-1 probe (not yet isolated).
    """
    size = PROBE_BATCH if batch is None else batch
    head, _, gemm = family.replace(";gemmdx=", ";gemm=dx:").partition(";gemm=")
    base, _, extra = head.partition(":")
    overhead = _probe_overhead(backend, device, phase, optimizer, base, size)
    if overhead is None:
        return None
    if gemm and backend in GEMM_PROBE_BACKENDS and (phase == "training" or base != "conv"):
        kind = "gemmdx" if gemm.startswith("dx:") else "gemm"
        shape, _, units = gemm.removeprefix("dx:").partition(">")
        gemm_overhead = _probe_overhead(backend, device, phase, optimizer, f"{kind}-{shape}-{units}", size)
        small_overhead = _probe_overhead(backend, device, phase, optimizer, f"{kind}-{shape}-{GEMM_SMALL_UNITS}", size)
        if gemm_overhead is not None and small_overhead is not None:
            overhead += max(gemm_overhead - small_overhead, 0)
    if not extra or backend not in PER_LAYER_OVERHEAD_BACKENDS or phase != "training":
        return overhead
    for item in extra.split(","):
        layer_type, _, count = item.partition("=")
        layer_overhead = _probe_overhead(backend, device, phase, optimizer, LAYER_PROBES[layer_type][0], size)
        if layer_overhead is not None:
            overhead += int(count) * max(
                layer_overhead - overhead_base(backend, device, phase, optimizer, size, base), 0
            )
    return overhead


def overhead_base(backend: str, device: str, phase: str, optimizer: str, batch: int, base: str = "conv") -> int:
    """A base probe's overhead (0 where it failed; the conv probe by default): what its per-layer probes are read
    against."""
    return _probe_overhead(backend, device, phase, optimizer, base, batch) or 0


#: Bumped whenever what a memory probe measures or how its figure is read changes (kept figures are then stale).
PROBE_VERSION = 1
#: Environment variables that change a first step's memory (oneDNN's ISA and scratch, MKL, OpenMP, TensorFlow's
#: oneDNN ops and threads, MXNet's engine and memory pool): a kept probe figure is reused only where they match.
_PROBE_ENV_PREFIXES = ("ONEDNN_", "DNNL_", "MKLDNN_", "MKL_", "OMP_", "KMP_", "TF_", "MXNET_", "PYTORCH_", "MALLOC_")
#: The kept probe figures a row's ``framework_overhead`` used, ``{probe: "probed <time>"}``, since
#: :func:`take_reused_probes` last emptied it (the row's message names them).
_REUSED: dict[str, str] = {}


def probe_key(backend: str, device: str, phase: str, optimizer: str, probe_name: str, batch: int) -> dict[str, Any]:
    """What a kept probe figure must match to be reused: the calibration's machine, framework and threads
    (:func:`benchmarks.harness.peaks.calibration_key`), the probe file's content, the phase, optimizer and batch,
    and every environment variable of :data:`_PROBE_ENV_PREFIXES`."""
    import hashlib

    from xfbench.benchmarks.harness.peaks import _profile_module, calibration_key

    key = calibration_key(backend, device, _profile_module(backend).threads(), str(get_backend(backend).VERSION))
    text = _probe_path(probe_name).read_text(encoding="utf-8")
    env = sorted((k, v) for k, v in os.environ.items() if k.startswith(_PROBE_ENV_PREFIXES))
    key.update(
        version=PROBE_VERSION,
        grids=hashlib.sha256(text.encode()).hexdigest()[:16],
        probe=probe_name,
        phase=phase,
        optimizer=optimizer,
        batch=batch,
        env=hashlib.sha256(json.dumps(env).encode()).hexdigest()[:16],
    )
    return key


def take_reused_probes() -> dict[str, str]:
    """The kept probe figures used since the last call (and forgets them)."""
    out = dict(_REUSED)
    _REUSED.clear()
    return out


@cache
def _probe_overhead(backend: str, device: str, phase: str, optimizer: str, probe_name: str, batch: int) -> int | None:
    """One probe's first step in a fresh process minus its own predicted step (bytes; None where it failed).

    Kept and reused as the step-time calibration is (issue 20: the probes took 140 s of torch's 323 s of model
    rows in a quick run): a figure measured on this machine, framework, threads and environment within
    ``XFBENCH_CALIBRATION_MAX_AGE_H`` hours is read back (``XFBENCH_CALIBRATION=fresh`` measures anew, ``off``
    neither reads nor keeps); the row's message says which probes were reused and when they were measured."""
    from xfbench.benchmarks.harness import peaks

    mode = peaks.calibration_mode()
    key = None
    if mode != "off":
        try:
            key = probe_key(backend, device, phase, optimizer, probe_name, batch)
        except Exception:  # the framework does not import here: measure, keep nothing
            key = None
    kept = peaks.load_kept(key, subdir="memory-probes") if key is not None and mode == "reuse" else None
    if kept is not None and "overhead" in kept.get("raw", {}):
        stamp = time.strftime("%Y-%m-%dT%H:%MZ", time.gmtime(float(kept["created"])))
        _REUSED[probe_name] = stamp
        value = kept["raw"]["overhead"]
        return None if value is None else int(value)
    overhead = _measure_probe_overhead(backend, device, phase, optimizer, probe_name, batch)
    if key is not None and overhead is not None:
        peaks.keep(key, {"overhead": float(overhead)}, subdir="memory-probes")
    return overhead


def _measure_probe_overhead(
    backend: str, device: str, phase: str, optimizer: str, probe_name: str, batch: int
) -> int | None:
    probe = Config(backend, str(_probe_path(probe_name)), phase, batch, device, "float32", optimizer)
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


#: oneDNN's ISA cap, in the order oneDNN (2.x/3.x) and MKL-DNN (MXNet 1.x's older builds) read it.
ONEDNN_ISA_ENV = ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA", "MKLDNN_MAX_CPU_ISA")
#: TensorFlow's switch for its oneDNN ops (``TF_ENABLE_ONEDNN_OPTS``) and the CPU features that turn them on by
#: default on Linux (TensorFlow's ``tensorflow/core/util/util.cc`` ``IsMKLEnabled``: AVX512_VNNI, AVX512_BF16,
#: AVX_VNNI, AMX_TILE, AMX_INT8, AMX_BF16; the process logs "oneDNN custom operations are on" when they are).
TF_ONEDNN_ENV = "TF_ENABLE_ONEDNN_OPTS"
TF_ONEDNN_CPU_FLAGS = ("avx512_vnni", "avx512_bf16", "avx_vnni", "amx_tile", "amx_int8", "amx_bf16")


@cache
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags (``/proc/cpuinfo``; empty where it cannot be read)."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def onednn_isa() -> str:
    """The instruction set oneDNN's kernels run with in this run: the CPU's best (``avx512`` with AVX512F/BW/VL/DQ,
    else ``avx2``, ``avx``, ``sse41``), capped by ``ONEDNN_MAX_CPU_ISA`` (or ``DNNL_``/``MKLDNN_MAX_CPU_ISA``) where
    set. The same run reads the same answer as the frameworks' oneDNN (they read the variable at their first
    primitive), which is what the predictions' blocked-layout sizes depend on."""
    flags = cpu_flags()
    if {"avx512f", "avx512bw", "avx512vl", "avx512dq"} <= flags:
        best = "avx512"
    elif "avx2" in flags:
        best = "avx2"
    elif "avx" in flags:
        best = "avx"
    else:
        best = "sse41"
    order = ("sse41", "avx", "avx2", "avx512")
    for name in ONEDNN_ISA_ENV:
        cap = os.environ.get(name, "").strip().lower()
        if not cap or cap in ("all", "default"):
            continue
        cap = "avx512" if cap.startswith(("avx512", "avx10", "amx")) else cap
        if cap in order and order.index(cap) < order.index(best):
            return cap
        break
    return best


def tf_onednn_enabled() -> bool:
    """Whether TensorFlow runs its oneDNN ops in this run: ``TF_ENABLE_ONEDNN_OPTS`` where set, else on for the CPUs
    :data:`TF_ONEDNN_CPU_FLAGS` names (TensorFlow's own default on Linux)."""
    text = os.environ.get(TF_ONEDNN_ENV, "").strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    return any(flag in cpu_flags() for flag in TF_ONEDNN_CPU_FLAGS)


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
                tf_onednn=config.backend == "tensorflow" and not tracked and tf_onednn_enabled(),
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


def mxnet_planned_step_bytes(config: Config) -> int | None:
    """MXNet's first step above the baseline (``hybridize(static_alloc=True)``, oneDNN): the bytes of its static
    memory plan over the simulated step's arrays (:func:`analytics.timeline_rules.mxnet_plan_bytes`; what the
    baseline holds, the categories of ``_built_terms``, is not planned) plus the arrays oneDNN keeps in blocked
    layouts (:func:`analytics.memory.mxnet_onednn_layout_bytes`, the channel block of this run's oneDNN ISA:
    :func:`onednn_isa`) and oneDNN's RNN workspace beyond the simulated reserve
    (:func:`analytics.memory.mxnet_onednn_rnn_bytes`). None where the simulator cannot lower the spec."""
    timeline = simulated_timeline(config)
    if timeline is None:
        return None
    before = _built_terms(config)
    requests = [
        (e.action, e.tensor, e.nbytes) for e in timeline.events if e.stage != "setup" and e.category not in before
    ]
    block = onednn_channel_block(onednn_isa())
    spec = config.spec()
    return (
        mxnet_plan_bytes(requests)
        + mxnet_onednn_layout_bytes(spec, config.batch_size, config.phase, block, config.dtype)
        + mxnet_onednn_rnn_bytes(spec, config.batch_size, config.phase, config.dtype)
    )


def _step_bytes(config: Config) -> int:
    """The process-level prediction's model part (:data:`PROCESS_PREDICTION`; the ledger where the simulator
    cannot lower the spec)."""
    mode = PROCESS_PREDICTION.get(config.backend)
    if mode == "planned" and device_kind(config.device) == "cpu":
        planned = mxnet_planned_step_bytes(config)
        if planned is not None:
            return planned
    if mode == "simulated":
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
