"""Step-time prediction per layer and phase: a roofline with this machine's measured peaks.

Framework-free (no deep-learning import); the peaks come from :mod:`benchmarks.harness.peaks`, which measures them
with the framework itself in the same run, or from a report's ``calibration`` rows, or from a datasheet
(:data:`analytics.roofline.DEVICE_CATALOG`, labelled ``datasheet:<name>``).

The model, for one layer and one phase (``forward``, ``input_grad``, ``weight_grad``, ``update``)::

    time = sum over the phase's work items of
           repeat * max(flops / gemm_rate(m, k, n), bytes / bandwidth(bytes))   (a GEMM)
           max(bytes / bandwidth(bytes), elements / rate)                     (element-wise, pooling, update)
         + ops * op_overhead_s                                                 (framework dispatch)

and the step adds the framework's fixed per-step cost (``step_overhead_s``: the call into a compiled
function, the loss, the optimizer's bookkeeping), measured on a one-layer probe model.

* **GEMM shape classes.** A convolution is its im2col GEMM (``M = N*Ho*Wo``, ``K = Cin*kh*kw``,
  ``N = Cout``; input gradient ``(M, N, K)``, weight gradient ``(K, M, N)``), a dense layer its matmul (input
  gradient ``(M, N, K)``, weight gradient ``(K, M, N)``), an LSTM its gate GEMMs per step. The rate of a shape
  is interpolated (multilinear in log2 of m, k, n, of log seconds per FLOP) over a table of GEMMs the
  framework itself timed on this machine (:data:`GEMM_GRID`); a CPU's tiny, skinny and square GEMMs differ
  several-fold in efficiency, which one peak cannot capture. Outside the table the nearest face is used.
* **Bandwidth** is interpolated over copies of a few working-set sizes (caches make small copies faster).
* **Dispatch.** Every framework op costs ``op_overhead_s`` (a chain of tiny ops in the step's execution
  mode: eager PyTorch, a ``tf.function``, a hybridized MXNet block); ``ops`` per layer and phase follow
  each framework's implementation (:data:`CONVENTIONS`).

Cross-machine (Habitat's idea, at step level): ``T_target = T_source_measured * P_target / P_source``, where
``P`` is this model's prediction with each machine's peaks: the measured time carries what the roofline
misses (a kernel's real efficiency), the peak ratio per work item carries what changed between machines.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from xfbench.analytics import vocab
from xfbench.analytics.costs import canonical_framework, has_weights, needs_input_grad
from xfbench.analytics.layers.base import WorkSite
from xfbench.analytics.memory import dtype_bytes
from xfbench.analytics.roofline import DATASHEET_LABEL, DeviceSpec
from xfbench.analytics.shapes import infer_shapes, layer_input_shapes
from xfbench.analytics.spec import ModelSpec
from xfbench.analytics.weights import output_kind

PHASES = ("forward", "input_grad", "weight_grad", "update")
STEP_PHASES = vocab.PHASES
OPTIMIZERS = tuple(vocab.OPTIMIZERS)
MEASURED_BASIS = "measured-peaks"
CROSS_MACHINE_BASIS = "cross-machine"
CALIBRATION_KIND = "calibration"

# The GEMM table (m, k, n) each backend times once per run: 4 x 4 x 4 shape classes from tiny to square.
GEMM_M: tuple[int, ...] = (1, 16, 256, 4096)
GEMM_K: tuple[int, ...] = (16, 128, 1024, 8192)
GEMM_N: tuple[int, ...] = (16, 128, 1024, 4096)
GEMM_GRID: tuple[tuple[int, int, int], ...] = tuple((m, k, n) for m in GEMM_M for k in GEMM_K for n in GEMM_N)
# The probe convolutions each backend times (3x3, stride 1, padding 1, batch 1): im2col M = side^2 of 14 and 56,
# K = 9 x (3, 16, 64, 256) input channels, N = 8 to 512 filters; first layers (weight gradient only) at K = 27 and 144.
CONV_M: tuple[int, ...] = (196, 3136)
CONV_K: tuple[int, ...] = (27, 144, 576, 2304)
CONV_N: tuple[int, ...] = (8, 32, 128, 512)
CONV_FIRST_K: tuple[int, ...] = (27, 144)
CONV_GRID: dict[str, tuple[tuple[int, int, int], ...]] = {
    "forward": tuple((m, k, n) for m in CONV_M for k in CONV_K for n in CONV_N),
    "backward": tuple((m, k, n) for m in CONV_M for k in CONV_K for n in CONV_N),
    "backward_first": tuple((m, k, n) for m in CONV_M for k in CONV_FIRST_K for n in CONV_N),
}
# glibc's malloc serves blocks above its mmap threshold (dynamic, at most 32 MiB on 64-bit: mallopt(3)) with a
# fresh mmap and unmaps them on free: each such allocation page-faults on first touch, every step.
FRESH_THRESHOLD = 32 << 20
# Working-set sizes of the bandwidth probes, bytes (L2-resident, L3-resident, DRAM on common CPUs). The probe is
# an in-place add (x += 1: one read and one write of each element, no read for ownership), so its 2 x bytes / time
# is the physical bandwidth.
COPY_SIZES: tuple[int, ...] = (1 << 18, 1 << 22, 1 << 26)


# --------------------------------------------------------------------------------------------------------------
# Peaks
# --------------------------------------------------------------------------------------------------------------


def _log_interp(x: float, xs: Sequence[float]) -> tuple[int, int, float]:
    """Bracketing indices and weight of ``x`` in the increasing grid ``xs``, in log2 space, clamped."""
    if x <= xs[0]:
        return 0, 0, 0.0
    if x >= xs[-1]:
        last = len(xs) - 1
        return last, last, 0.0
    for i in range(len(xs) - 1):
        if xs[i] <= x <= xs[i + 1]:
            lo, hi = math.log2(xs[i]), math.log2(xs[i + 1])
            return i, i + 1, (math.log2(x) - lo) / (hi - lo)
    raise AssertionError("unreachable: xs must be increasing")


def interpolate_rate(table: Mapping[tuple[int, int, int], float], m: int, k: int, n: int) -> float:
    """Rate at (m, k, n) from a full grid ``{(m, k, n): rate}``: multilinear interpolation of log(1 / rate) in
    (log2 m, log2 k, log2 n), clamped to the grid's box; a one-entry table is flat."""
    if len(table) == 1:
        return float(next(iter(table.values())))
    ms = sorted({p[0] for p in table})
    ks = sorted({p[1] for p in table})
    ns = sorted({p[2] for p in table})
    im, ik, i_n = _log_interp(m, ms), _log_interp(k, ks), _log_interp(n, ns)
    acc = 0.0
    for a, wa in ((im[0], 1 - im[2]), (im[1], im[2])):
        for b, wb in ((ik[0], 1 - ik[2]), (ik[1], ik[2])):
            for c, wc in ((i_n[0], 1 - i_n[2]), (i_n[1], i_n[2])):
                weight = wa * wb * wc
                if weight == 0.0:
                    continue
                rate = table.get((ms[a], ks[b], ns[c]))
                if rate is None:
                    raise ValueError(f"rate table lacks the point {ms[a]}x{ks[b]}x{ns[c]}")
                acc += weight * math.log(1.0 / rate)
    return math.exp(-acc)


@dataclass(frozen=True)
class MachinePeaks:
    """What the prediction needs to know about one (machine, framework, device).

    * ``gemm``: ``{(m, k, n): FLOP/s}`` over the full :data:`GEMM_GRID` (or one entry ``(1, 1, 1)`` for a flat
      datasheet peak); rates are net of the dispatch of one call.
    * ``bandwidth``: ``{working-set bytes: bytes/s}``, physical (reads, writes, reads for ownership all count).
    * ``op_overhead_s``: seconds per dispatched op in the step's execution mode.
    * ``step_overhead_s``: ``{"inference": s, "training": s}``, the fixed cost of one step.
    * ``rates``: element operations per second of the framework's kernels that are not streaming copies:
      ``elementwise`` (transcendental activations, random masks), ``pool`` (window elements of a max
      pooling), ``transpose`` (elements of an NCHW <-> NHWC transpose); absent: that work is memory-bound.
    * ``fault_bw``: bytes/s of first touching freshly mapped memory (page faults): the extra cost of a new
      allocation above :data:`FRESH_THRESHOLD` where the framework's allocator returns such blocks to the
      system (``None``: it keeps them).
    * ``conv``: ``{kernel: {(M, K, N): FLOP/s}}``, the framework's own convolution kernels timed on probe
      convolutions of im2col GEMM shape ``(M, K, N)``: ``forward``, ``backward`` (input and weight gradients
      together, FLOPs of both) and ``backward_first`` (a first layer's weight gradient only); a convolution
      is priced from these where present (interpolated like the GEMM table), from the GEMM table otherwise.
    * ``exact``: ``{probe key: seconds}``, the framework's own op timed at a layer's exact shape (:func:`probe_key`:
      convolutions and dense layers, forward and backward, net of one call's dispatch): an item with such a key is
      priced from it instead of the tables (``{}``: the tables alone, as for a machine known only from a report).
    * ``layer_overhead_s``: ``{"inference": s, "training": s}``, the framework's fixed cost per spec layer beyond its
      ops' dispatch (a module call, a graph node's bookkeeping), from probe models of 1 and 9 dense layers.
    * ``basis``: ``measured-peaks`` or ``datasheet:<name>``.
    """

    label: str
    basis: str
    gemm: Mapping[tuple[int, int, int], float]
    bandwidth: Mapping[int, float]
    op_overhead_s: float
    step_overhead_s: Mapping[str, float] = field(default_factory=dict)
    rates: Mapping[str, float] = field(default_factory=dict)
    threads: int | None = None
    fault_bw: float | None = None
    conv: Mapping[str, Mapping[tuple[int, int, int], float]] = field(default_factory=dict)
    exact: Mapping[str, float] = field(default_factory=dict)
    layer_overhead_s: Mapping[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.gemm or not self.bandwidth:
            raise ValueError("peaks need at least one GEMM rate and one bandwidth")
        for v in (*self.gemm.values(), *self.bandwidth.values()):
            if not (math.isfinite(v) and v > 0):
                raise ValueError(f"peak figures must be positive and finite, got {v!r}")
        if not (math.isfinite(self.op_overhead_s) and self.op_overhead_s >= 0):
            raise ValueError(f"op overhead must be >= 0, got {self.op_overhead_s!r}")

    def gemm_rate(self, m: int, k: int, n: int) -> float:
        """FLOP/s of an (m x k) @ (k x n) product: multilinear interpolation of log(seconds per FLOP) in
        (log2 m, log2 k, log2 n) over the table; clamped to the table's box; a one-entry table is flat."""
        return interpolate_rate(self.gemm, m, k, n)

    def conv_rate(self, kernel: str, m: int, k: int, n: int) -> float | None:
        """FLOP/s of the framework's ``kernel`` convolution of im2col shape (m, k, n), or ``None`` unmeasured."""
        table = self.conv.get(kernel)
        return interpolate_rate(table, m, k, n) if table else None

    def bw(self, nbytes: float) -> float:
        """Bytes/s for a working set of ``nbytes``: log-linear interpolation between the measured copies."""
        sizes = sorted(self.bandwidth)
        lo, hi, w = _log_interp(max(nbytes, 1.0), sizes)
        return math.exp((1 - w) * math.log(self.bandwidth[sizes[lo]]) + w * math.log(self.bandwidth[sizes[hi]]))

    def step_overhead(self, phase: str) -> float:
        return float(self.step_overhead_s.get(phase, 0.0))

    def layer_overhead(self, phase: str) -> float:
        return float(self.layer_overhead_s.get(phase, 0.0))

    @property
    def peak_flops(self) -> float:
        return max(self.gemm.values())

    def summary(self) -> str:
        bw = max(self.bandwidth.values())
        steps = ", ".join(f"{k} {v * 1e6:.0f} us" for k, v in self.step_overhead_s.items())
        return (
            f"{self.label}: GEMM {min(self.gemm.values()) / 1e9:.2f}..{self.peak_flops / 1e9:.1f} GFLOP/s over "
            f"{len(self.gemm)} shape classes, bandwidth up to {bw / 1e9:.1f} GB/s, {self.op_overhead_s * 1e6:.1f} us "
            f"per op" + (f", step overhead {steps}" if steps else "") + f" ({self.basis})"
        )


def datasheet_peaks(device: DeviceSpec, dtype: str = "float32") -> MachinePeaks:
    """Peaks of a catalog device from its datasheet (``basis = datasheet:<name>``): one flat GEMM peak, one
    bandwidth, the catalog's launch overhead per op, no step overhead. Upper bounds: times are optimistic."""
    return MachinePeaks(
        label=f"{device.name} ({DATASHEET_LABEL})",
        basis=f"datasheet:{device.name}",
        gemm={(1, 1, 1): device.peak(dtype)},
        bandwidth={1: device.mem_bandwidth},
        op_overhead_s=device.launch_overhead_s,
    )


# --------------------------------------------------------------------------------------------------------------
# How each framework executes a layer (ops dispatched, what is fused)
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Convention:
    """How a framework runs the spec's layers (read from its implementation; ops = dispatched kernels).

    ``bias_fused``: the bias add is inside the GEMM op (no pass over the output). ``act_fused``: a layer's
    relu is fused into its GEMM op. ``lstm``: ``"fused"`` = one kernel for the whole sequence (oneDNN RNN:
    the input projection of all steps as one GEMM, then one recurrent GEMM and the fused cell per step),
    ``"per-step"`` = per step two GEMMs and ``lstm_step_ops`` element-wise ops (``lstm_step_bwd_ops`` in the
    backward). ``lstm_wrapper_ops``: ops around a fused kernel (initial states, layout). ``update_ops``: ops
    per parameter tensor per optimizer. ``loss_ops``: forward + backward ops of the loss and the step's
    bookkeeping. ``fresh_allocations``: every op output is a new allocation (no pool, no static plan), so
    outputs above :data:`FRESH_THRESHOLD` page-fault every step. ``conv_backward_ops``: 1 where one op
    computes a convolution's input and weight gradients (PyTorch, MXNet), 2 where each has its own.
    ``update_temporaries``: parameter-sized temporaries the optimizer's update allocates per optimizer (each
    written and read once, besides the in-place streams). ``first_conv_input_grad``: the first convolution's
    gradient op also computes the gradient of the model's input (TensorFlow's Conv2D gradient emits both ops,
    and the profiler sees both run). ``nhwc``: the model transposes an NCHW input to NHWC before its first
    image layer and an image output back (Keras). ``explicit_pad_ops``: an int padding is its own pad op
    before the conv or pool (Keras ``ZeroPadding2D``). ``same_pad_native``: the kernels pad asymmetric
    ``same`` themselves (TensorFlow); elsewhere a pad op copies the input first.
    """

    bias_fused: bool
    act_fused: bool
    lstm: str
    lstm_step_ops: int
    lstm_step_bwd_ops: int
    lstm_wrapper_ops: int
    update_ops: Mapping[str, int]
    loss_ops: int
    fresh_allocations: bool
    conv_backward_ops: int = 1
    update_temporaries: Mapping[str, int] = field(default_factory=dict)
    first_conv_input_grad: bool = False
    nhwc: bool = False
    explicit_pad_ops: bool = False
    same_pad_native: bool = False
    #: ops (forward, backward) of a GELU per kind where it is not one kernel each way (Keras' tf.nn.gelu and
    #: Gluon's gelu_tanh are composed of element-wise ops, each a pass over the tensor)
    gelu_ops: Mapping[str, tuple[int, int]] = field(default_factory=dict)


CONVENTIONS: dict[str, Convention] = {
    # PyTorch eager (2.x CPU): conv (oneDNN) and linear (addmm) add the bias inside the op; relu is its own
    # op; the LSTM is aten::mkldnn_rnn_layer (oneDNN, fused, forward and backward); optim.SGD on the CPU
    # loops over tensors (one add_ each; momentum 3 ops, Adam about 12); outputs come from malloc.
    "torch": Convention(
        bias_fused=True,
        act_fused=False,
        lstm="fused",
        lstm_step_ops=0,
        lstm_step_bwd_ops=0,
        lstm_wrapper_ops=12,
        update_ops={"sgd": 1, "momentum": 3, "adam": 12},
        loss_ops=12,
        fresh_allocations=True,
        update_temporaries={"sgd": 0, "momentum": 0, "adam": 2},  # Adam: sqrt(v), then / bias correction
    ),
    # TensorFlow (a tf.function on oneDNN): grappler fuses Conv2D/MatMul + BiasAdd + Relu; Keras' LSTM runs
    # a While loop with per step: 2 MatMul, BiasAdd, AddV2, split, 3 sigmoid, 2 tanh, 3 mul, 1 add. Its CPU
    # allocator returns blocks above 32 MiB to the system like malloc (a 64 MiB output page-faults: measured).
    "tensorflow": Convention(
        bias_fused=True,
        act_fused=True,
        lstm="per-step",
        lstm_step_ops=13,
        lstm_step_bwd_ops=20,
        lstm_wrapper_ops=10,
        update_ops={"sgd": 2, "momentum": 6, "adam": 14},
        loss_ops=12,
        fresh_allocations=True,
        conv_backward_ops=2,
        # Keras 3 on TensorFlow: SGD assign_sub(g * lr) (one temporary); momentum and Adam build their
        # expressions from whole-tensor ops, each a new tensor, before assigning
        update_temporaries={"sgd": 1, "momentum": 4, "adam": 9},
        first_conv_input_grad=True,
        nhwc=True,
        explicit_pad_ops=True,
        same_pad_native=True,
        # tf.nn.gelu (nn_ops.py): erf form Mul, Erf, AddV2, Mul, Mul; tanh form Pow, Mul, AddV2, Mul, Tanh, AddV2,
        # Mul, Mul; their gradients about twice as many ops (first approximation)
        gelu_ops={"gelu": (5, 9), "gelu_tanh": (8, 15)},
    ),
    # MXNet (hybridized with static_alloc: one memory plan reused every step, oneDNN): Convolution and
    # FullyConnected take the bias; the Gluon block's activation is a separate Activation op; the CPU LSTM
    # is one fused oneDNN RNN op; the Trainer issues one update op per parameter.
    "mxnet": Convention(
        bias_fused=True,
        act_fused=False,
        lstm="fused",
        lstm_step_ops=0,
        lstm_step_bwd_ops=0,
        lstm_wrapper_ops=2,
        update_ops={"sgd": 1, "momentum": 1, "adam": 1},
        loss_ops=8,
        fresh_allocations=False,
        # LeakyReLU(act_type="gelu") is one kernel; gelu_tanh is composed in the block (tanh, products, sums)
        gelu_ops={"gelu_tanh": (8, 14)},
    ),
}


# --------------------------------------------------------------------------------------------------------------
# Work items
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Work:
    """One piece of a layer's work in one phase.

    ``gemm``: ``(m, k, n)`` of one GEMM (else ``None``: element-wise, pooling, update); ``repeat``: how many
    times that GEMM is issued (LSTM steps); ``flops``, ``bytes``: of one repetition; ``elements``: element-wise
    operations of one repetition that are compute work (transcendentals, random numbers); ``fresh``: bytes of
    new allocations one repetition writes (counted only where the framework allocates every output afresh);
    ``ops``: framework ops dispatched for the whole item (all repetitions). ``kernel``/``conv_shape``: a
    convolution GEMM's kernel (``forward``, ``backward``, ``backward_first``) and the forward im2col shape
    (M, K, N) that keys :meth:`MachinePeaks.conv_rate`. ``written``: bytes of ``bytes`` that are writes to
    memory the item did not read (a new output): on a write-allocate cache each costs a read for ownership
    too, so the physical traffic is ``bytes + written``; an in-place update (``inplace``) writes where it
    read. ``rate``: which of :attr:`MachinePeaks.rates` prices ``elements``; ``fallback``: the rate that prices them
    where ``rate`` was not measured (a calibration kept before that rate was timed; ``None``: no compute term, the
    bandwidth alone).
    """

    layer: int
    phase: str
    what: str
    flops: float = 0.0
    bytes: float = 0.0
    gemm: tuple[int, int, int] | None = None
    repeat: int = 1
    ops: int = 0
    elements: float = 0.0
    fresh: float = 0.0
    kernel: str = ""
    conv_shape: tuple[int, int, int] | None = None
    rate: str = "elementwise"
    inplace: bool = False
    written: float = 0.0
    fallback: str | None = None
    probe: str = ""
    probe_share: float = 1.0


class _Builder:
    """Collects the work items of one step under one framework's convention."""

    def __init__(self, fw: Convention, width: int) -> None:
        self.fw, self.w = fw, width
        self.items: list[Work] = []

    def _fresh(self, nbytes: float) -> float:
        return float(nbytes) if self.fw.fresh_allocations else 0.0

    def gemm(
        self,
        layer: int,
        phase: str,
        what: str,
        m: int,
        k: int,
        n: int,
        repeat: int = 1,
        ops: int | None = None,
        kernel: str = "",
        conv_shape: tuple[int, int, int] | None = None,
        probe: str = "",
        probe_share: float = 1.0,
    ) -> None:
        w = self.w
        self.items.append(
            Work(
                layer,
                phase,
                f"{what} gemm {m}x{k}x{n}" + (f" x{repeat}" if repeat > 1 else ""),
                flops=2.0 * m * k * n,
                bytes=float((m * k + k * n + m * n) * w),
                gemm=(m, k, n),
                repeat=repeat,
                ops=repeat if ops is None else ops,
                fresh=self._fresh(m * n * w),
                written=float(m * n * w),
                kernel=kernel,
                conv_shape=conv_shape,
                probe=probe,
                probe_share=probe_share,
            )
        )

    def mem(
        self,
        layer: int,
        phase: str,
        what: str,
        nbytes: float,
        ops: int = 1,
        elements: float = 0.0,
        out: float = 0.0,
        rate: str = "elementwise",
        inplace: bool = False,
        fallback: str | None = None,
        probe: str = "",
        probe_share: float = 1.0,
    ) -> None:
        """Memory-bound work moving ``nbytes`` (``elements`` compute operations priced at ``rate``, else at
        ``fallback`` where ``rate`` was not measured); ``out``: bytes of the new output it allocates; ``probe``: as
        for :meth:`gemm` (an item inside a layer probed whole)."""
        self.items.append(
            Work(
                layer,
                phase,
                what,
                bytes=float(nbytes),
                ops=ops,
                elements=float(elements),
                fresh=self._fresh(out),
                rate=rate,
                inplace=inplace,
                written=0.0 if inplace else float(out),
                fallback=fallback,
                probe=probe,
                probe_share=probe_share,
            )
        )

    def activation(self, i: int, kind: str | None, elements: int, training: bool, fused: bool) -> None:
        """Forward and backward of an activation over ``elements`` outputs (relu fused where the framework
        fuses it; transcendentals also count as compute elements).

        Softmax and the GELUs are compute-bound kernels (exp, erf, tanh, row reductions): their elements are priced
        at their own measured rate (:data:`_OWN_RATE`: ``rates[kind]``, the framework's kernel timed as the model
        runs it, a composed GELU's ops together), the bytes still bounding from below. Their backward is priced at
        the same rate over the same elements - a first convention (the gradient kernels were not timed apart).
        Where the rate was not measured (an older kept calibration) the forward falls back to the sigmoid's rate
        (``elementwise``) and the backward to bandwidth alone, as before."""
        if kind is None:
            return
        w = self.w
        compute = elements if kind in _TRANSCENDENTAL else 0
        own = kind in _OWN_RATE
        rate = kind if own else "elementwise"
        fallback = "elementwise" if own else None
        # a GELU composed of element-wise ops (Convention.gelu_ops): each op a pass (two reads, one write)
        fwd_ops, bwd_ops = self.fw.gelu_ops.get(kind, (1, 1))
        if not (fused and kind == "relu"):
            passes = 2 if fwd_ops == 1 else 3 * fwd_ops
            self.mem(
                i,
                "forward",
                kind,
                passes * elements * w,
                fwd_ops,
                compute,
                out=fwd_ops * elements * w,
                rate=rate,
                fallback=fallback,
            )
        if training:
            self.mem(
                i,
                "input_grad",
                f"{kind} grad",
                3 * bwd_ops * elements * w,
                bwd_ops,
                elements if own else 0,
                out=bwd_ops * elements * w,
                rate=rate,
            )


#: activations whose element-wise work is compute (exp, erf, tanh) as well as memory
_TRANSCENDENTAL = ("sigmoid", "tanh", "softmax", "gelu", "gelu_tanh")
#: activations priced at their own measured rate (``MachinePeaks.rates[kind]``; the calibration's ``rate:<kind>``)
_OWN_RATE = ("softmax", "gelu", "gelu_tanh")


def layer_work(
    spec: ModelSpec,
    batch_size: int,
    phase: str = "training",
    dtype: str = "float32",
    framework: str = "torch",
    optimizer: str = "sgd",
) -> list[Work]:
    """Every work item of one step of ``spec`` (``phase``: ``inference`` = forward only, ``training`` = forward,
    input and weight gradients, optimizer update), per layer, under ``framework``'s :class:`Convention`.
    Layer index ``-1`` is the step itself (the loss)."""
    if phase not in STEP_PHASES:
        raise ValueError(f"unknown phase {phase!r}; allowed: {', '.join(STEP_PHASES)}")
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {optimizer!r}; allowed: {', '.join(OPTIMIZERS)}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size <= 0:
        raise ValueError(f"batch size must be a positive integer, got {batch_size!r}")
    fw_name = canonical_framework(framework)
    fw = CONVENTIONS[fw_name]
    training = phase == "training"
    w = dtype_bytes(dtype)
    B = batch_size
    outs = infer_shapes(spec)
    all_ins = layer_input_shapes(spec)
    ins = [shapes[0] for shapes in all_ins]
    grads = needs_input_grad(spec)
    b = _Builder(fw, w)
    channels_last = False
    for i, (layer, in_shape, out_shape) in enumerate(zip(spec.layers, ins, outs)):
        in_elems = B * math.prod(in_shape)
        out_elems = B * math.prod(out_shape)
        need_dx = training and grads[i]
        image = len(in_shape) == 3 and layer.NHWC_INPUT
        if fw.nhwc and image and not channels_last:
            b.mem(i, "forward", "to NHWC", 2 * in_elems * w, 1, in_elems, out=in_elems * w, rate="transpose")
            if need_dx:
                b.mem(
                    i, "input_grad", "to NHWC grad", 2 * in_elems * w, 1, in_elems, out=in_elems * w, rate="transpose"
                )
            channels_last = True
        if layer.ENDS_IMAGE:
            channels_last = False
        layer.work(b, WorkSite(i, B, all_ins[i], out_shape, need_dx, training, fw_name))  # the type's own items
        if training and has_weights(layer):
            params = layer.trainable_params(all_ins[i], out_shape, fw_name)
            tensors = layer.param_tensors(fw_name)
            streams = 3 + 2 * vocab.OPTIMIZER_SLOTS[optimizer]  # read p and g, write p; read and write each slot
            b.mem(i, "update", optimizer, streams * params * w, fw.update_ops[optimizer] * tensors, inplace=True)
            for _ in range(fw.update_temporaries.get(optimizer, 0)):
                b.mem(i, "update", f"{optimizer} temporary", 2 * params * w, 0, out=params * w)
    if fw.nhwc and channels_last and len(outs[-1]) == 3:
        out_elems = B * math.prod(outs[-1])
        b.mem(-1, "forward", "to NCHW", 2 * out_elems * w, 1, out_elems, out=out_elems * w, rate="transpose")
        if training:
            b.mem(
                -1, "input_grad", "to NCHW grad", 2 * out_elems * w, 1, out_elems, out=out_elems * w, rate="transpose"
            )
    if training:
        kind = output_kind(spec)
        out_elems = B * math.prod(outs[-1])
        compute = out_elems if kind != "regression" else 0
        b.mem(-1, "forward", f"loss ({kind})", 4 * out_elems * w, fw.loss_ops, compute)
    return b.items


#: the kinds of an exact-shape probe: the forward op; forward + input and weight gradients (``backward``, the
#: gradients' time net of the forward); forward + weight gradient only (``backward_first``: a first layer)
PROBE_KINDS = ("forward", "backward", "backward_first")


def probe_key(op: str, dims: Mapping[str, Any], kind: str) -> str:
    """The exact-shape probe key of one framework op: ``conv:BxCxHxW>F:kKHxKW:sSHxSW:pT,B,L,R|kind`` (a batch of B
    ``(C, H, W)`` inputs, F filters, kernel, stride, pads top, bottom, left, right), ``dense:RxF>U|kind`` (R
    rows of F features into U units) or ``lstm:BxTxF>H:rS|kind`` (the framework's whole LSTM layer on B sequences
    of T steps of F features, H units, S = 1 where it returns every step); ``kind`` one of :data:`PROBE_KINDS`."""
    if kind not in PROBE_KINDS:
        raise ValueError(f"unknown probe kind {kind!r}; allowed: {', '.join(PROBE_KINDS)}")
    if op == "conv":
        d = dims
        body = (
            f"conv:{d['batch']}x{d['channels']}x{d['height']}x{d['width']}>{d['filters']}"
            f":k{d['kernel'][0]}x{d['kernel'][1]}:s{d['stride'][0]}x{d['stride'][1]}:p{','.join(map(str, d['pads']))}"
        )
    elif op == "dense":
        body = f"dense:{dims['rows']}x{dims['features']}>{dims['units']}"
    elif op == "lstm":
        body = f"lstm:{dims['batch']}x{dims['steps']}x{dims['features']}>{dims['units']}:r{int(dims['sequences'])}"
    else:
        raise ValueError(f"unknown probe op {op!r}; allowed: conv, dense, lstm")
    return f"{body}|{kind}"


_CONV_KEY = re.compile(r"conv:(\d+)x(\d+)x(\d+)x(\d+)>(\d+):k(\d+)x(\d+):s(\d+)x(\d+):p(\d+),(\d+),(\d+),(\d+)")
_DENSE_KEY = re.compile(r"dense:(\d+)x(\d+)>(\d+)")
_LSTM_KEY = re.compile(r"lstm:(\d+)x(\d+)x(\d+)>(\d+):r([01])")


def parse_probe_key(key: str) -> tuple[str, dict[str, Any], str]:
    """``(op, dims, kind)`` of a :func:`probe_key` (its inverse); a malformed key raises ``ValueError``."""
    body, _, kind = key.partition("|")
    if kind not in PROBE_KINDS:
        raise ValueError(f"probe key {key!r}: unknown kind {kind!r}; allowed: {', '.join(PROBE_KINDS)}")
    m = _CONV_KEY.fullmatch(body)
    if m:
        v = [int(g) for g in m.groups()]
        dims = {
            "batch": v[0],
            "channels": v[1],
            "height": v[2],
            "width": v[3],
            "filters": v[4],
            "kernel": (v[5], v[6]),
            "stride": (v[7], v[8]),
            "pads": (v[9], v[10], v[11], v[12]),
        }
        return "conv", dims, kind
    m = _DENSE_KEY.fullmatch(body)
    if m:
        rows, features, units = (int(g) for g in m.groups())
        return "dense", {"rows": rows, "features": features, "units": units}, kind
    m = _LSTM_KEY.fullmatch(body)
    if m:
        batch, steps, features, units, seqs = (int(g) for g in m.groups())
        dims = {"batch": batch, "steps": steps, "features": features, "units": units, "sequences": bool(seqs)}
        return "lstm", dims, kind
    raise ValueError(
        f"malformed probe key {key!r}; expected conv:BxCxHxW>F:kKHxKW:sSHxSW:pT,B,L,R|kind, dense:RxF>U|kind or "
        "lstm:BxTxF>H:rS|kind"
    )


def probe_keys(
    spec: ModelSpec,
    batch_size: int,
    phase: str = "training",
    dtype: str = "float32",
    framework: str = "torch",
    optimizer: str = "sgd",
) -> list[str]:
    """The exact-shape probes one step of ``spec`` can be priced from, in layer order, each once."""
    keys: dict[str, None] = {}
    for item in layer_work(spec, batch_size, phase, dtype, framework, optimizer):
        if item.probe:
            keys[item.probe] = None
    return list(keys)


# --------------------------------------------------------------------------------------------------------------
# Times
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WorkTime:
    """``seconds`` of a work item: ``compute_s`` (its compute term, all repetitions, kernel ratio applied) and
    ``overhead_s`` (dispatch) are parts of it; ``bound`` names the term that dominates."""

    work: Work
    seconds: float
    bound: str  # compute, memory, overhead
    compute_s: float = 0.0
    overhead_s: float = 0.0


def work_time(item: Work, peaks: MachinePeaks) -> WorkTime:
    """Seconds of one work item (module docstring); ``bound`` names the term that dominates."""
    overhead = item.ops * peaks.op_overhead_s
    exact = peaks.exact.get(item.probe) if item.probe else None
    if exact is not None:
        # the framework's own op timed at this shape: its memory traffic, page faults and inner dispatches are inside
        # the time, which is net of one call: one dispatch is added back, on the item that carries a share
        compute = exact * item.probe_share
        overhead = peaks.op_overhead_s if item.ops and item.probe_share > 0 else 0.0
        # (the probe times the whole op, all repetitions of a per-step item included)
        return WorkTime(item, compute + overhead, "overhead" if overhead > compute else "compute", compute, overhead)
    if item.gemm is not None:
        rate = peaks.conv_rate(item.kernel, *item.conv_shape) if item.kernel and item.conv_shape else None
        compute = item.flops / (rate or peaks.gemm_rate(*item.gemm))
    else:
        rate = peaks.rates.get(item.rate) or (peaks.rates.get(item.fallback) if item.fallback else None)
        compute = item.elements / rate if rate and item.elements else 0.0
    traffic = item.bytes + item.written  # physical: a new output's lines are read for ownership first
    memory = traffic / peaks.bw(traffic) if traffic else 0.0
    faults = item.fresh / peaks.fault_bw if peaks.fault_bw and item.fresh > FRESH_THRESHOLD else 0.0
    body = item.repeat * (max(compute, memory) + faults)
    bound = "overhead" if overhead > body else ("compute" if compute >= memory else "memory")
    return WorkTime(item, body + overhead, bound, item.repeat * compute, overhead)


@dataclass(frozen=True)
class StepPrediction:
    """A predicted step: per (layer, phase) seconds, the step's fixed overhead and the total."""

    model: str
    framework: str
    phase: str
    batch_size: int
    dtype: str
    optimizer: str
    peaks_label: str
    basis: str
    items: tuple[WorkTime, ...]
    step_overhead_s: float
    layer_names: tuple[str, ...]

    @property
    def total_s(self) -> float:
        return self.step_overhead_s + sum(t.seconds for t in self.items)

    def by_layer_phase(self) -> dict[tuple[int, str], float]:
        """``{(layer index, phase): seconds}`` (layer -1: the loss); the step overhead is not included."""
        out: dict[tuple[int, str], float] = {}
        for t in self.items:
            key = (t.work.layer, t.work.phase)
            out[key] = out.get(key, 0.0) + t.seconds
        return out

    def by_phase(self) -> dict[str, float]:
        out: dict[str, float] = dict.fromkeys(PHASES, 0.0)
        for t in self.items:
            out[t.work.phase] += t.seconds
        return {k: v for k, v in out.items() if v or k == "forward"}

    def by_bound(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for t in self.items:
            out[t.bound] = out.get(t.bound, 0.0) + t.seconds
        out["step overhead"] = self.step_overhead_s
        return out

    def as_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "framework": self.framework,
            "phase": self.phase,
            "batch_size": self.batch_size,
            "dtype": self.dtype,
            "optimizer": self.optimizer,
            "peaks": self.peaks_label,
            "prediction_basis": self.basis,
            "time_predicted_s": self.total_s,
            "step_overhead_s": self.step_overhead_s,
            "by_phase_s": self.by_phase(),
            "by_bound_s": self.by_bound(),
            "layers": [
                {
                    "index": i,
                    "name": self.layer_names[i] if i >= 0 else "loss",
                    "phase": ph,
                    "seconds": s,
                }
                for (i, ph), s in sorted(self.by_layer_phase().items(), key=lambda kv: (kv[0][0] < 0, kv[0]))
            ],
        }


def layer_names(spec: ModelSpec) -> tuple[str, ...]:
    """Each layer's display name, as :func:`analytics.predict.predict` names it."""
    return tuple(
        layer.label if layer.label != layer.type else f"{layer.type.lower()}{i}" for i, layer in enumerate(spec.layers)
    )


def predict_step(
    spec: ModelSpec,
    batch_size: int,
    phase: str,
    peaks: MachinePeaks,
    *,
    framework: str = "torch",
    dtype: str = "float32",
    optimizer: str = "sgd",
) -> StepPrediction:
    """The predicted step time of ``spec`` with ``peaks`` (module docstring), per layer and phase; each layer also
    costs the framework's per-layer overhead of the phase (:attr:`MachinePeaks.layer_overhead_s`, put in the layer's
    forward)."""
    items = tuple(work_time(wk, peaks) for wk in layer_work(spec, batch_size, phase, dtype, framework, optimizer))
    per_layer = peaks.layer_overhead(phase)
    if per_layer > 0:
        items += tuple(
            WorkTime(Work(i, "forward", "per-layer overhead"), per_layer, "overhead", 0.0, per_layer)
            for i in range(len(spec.layers))
        )
    return StepPrediction(
        model=spec.name,
        framework=canonical_framework(framework),
        phase=phase,
        batch_size=batch_size,
        dtype=dtype,
        optimizer=optimizer if phase == "training" else "",
        peaks_label=peaks.label,
        basis=peaks.basis,
        items=items,
        step_overhead_s=peaks.step_overhead(phase),
        layer_names=layer_names(spec),
    )


def cross_machine(measured_source_s: float, source: StepPrediction, target: StepPrediction) -> float:
    """Habitat-style: the source machine's measured step time scaled by the ratio of the two predictions
    (same model, phase, batch, framework), ``measured * P_target / P_source``."""
    if measured_source_s <= 0 or source.total_s <= 0:
        raise ValueError("the source's measured and predicted times must be positive")
    return measured_source_s * target.total_s / source.total_s


def rel_error(predicted: float, measured: float) -> float:
    """``(predicted - measured) / measured``."""
    if measured <= 0:
        raise ValueError(f"measured time must be positive, got {measured!r}")
    return (predicted - measured) / measured


def median_abs(values: Iterable[float]) -> float | None:
    vals = sorted(abs(v) for v in values)
    if not vals:
        return None
    mid = len(vals) // 2
    return vals[mid] if len(vals) % 2 else (vals[mid - 1] + vals[mid]) / 2


# --------------------------------------------------------------------------------------------------------------
# Peaks in a report: ``calibration`` rows
# --------------------------------------------------------------------------------------------------------------


def peaks_to_rows(peaks: MachinePeaks, backend: str, device: str, raw: Mapping[str, Any] | None = None) -> list[dict]:
    """The report rows (``kind = calibration``) that carry ``peaks``, ``shape`` naming the figure:

    * ``gemm:MxKxN`` and ``conv-<kernel>:MxKxN``: ``achieved_flops_per_s`` = the rate used;
    * ``stream:BYTES``: ``time_median_s`` = moving 2 x BYTES (an in-place add over BYTES);
    * ``fault:BYTES``: ``time_median_s`` = the page faults of a fresh allocation of BYTES;
    * ``dispatch:op``: seconds per op; ``rate:<name>``: seconds per 10^6 elements; ``step:<phase>``: seconds.

    ``raw`` may hold measured medians per shape (``gemm:...`` -> seconds) to report beside the rates."""
    raw = raw or {}
    base = {
        "kind": CALIBRATION_KIND,
        "backend": backend,
        "device": device,
        "status": "ok",
        "prediction_basis": peaks.basis,
    }
    note = f"step-time calibration ({peaks.label}" + (f", {peaks.threads} threads" if peaks.threads else "") + ")"
    rows: list[dict[str, Any]] = []
    for (m, k, n), rate in sorted(peaks.gemm.items()):
        shape = f"gemm:{m}x{k}x{n}"
        rows.append(
            {
                **base,
                "dtype": "float32",
                "shape": shape,
                "time_median_s": raw.get(shape, 2.0 * m * k * n / rate),
                "achieved_flops_per_s": rate,
                "gflops_per_s": rate / 1e9,
                "message": note + ": GEMM shape class, rate net of one call's dispatch",
            }
        )
    for size, bw in sorted(peaks.bandwidth.items()):
        rows.append(
            {
                **base,
                "shape": f"stream:{size}",
                "time_median_s": 2.0 * size / bw,
                "message": note + ": in-place add over that many bytes (2 x bytes moved)",
            }
        )
    rows.append(
        {**base, "shape": "dispatch:op", "time_median_s": peaks.op_overhead_s, "message": note + ": seconds per op"}
    )
    for name, rate in sorted(peaks.rates.items()):
        rows.append(
            {
                **base,
                "shape": f"rate:{name}",
                "time_median_s": 1e6 / rate,
                "message": note + f": seconds per 10^6 {name} element operations",
            }
        )
    for kernel, table in sorted(peaks.conv.items()):
        for (m, k, n), rate in sorted(table.items()):
            shape = f"conv-{kernel}:{m}x{k}x{n}"
            rows.append(
                {
                    **base,
                    "dtype": "float32",
                    "shape": shape,
                    "time_median_s": raw.get(shape),
                    "achieved_flops_per_s": rate,
                    "gflops_per_s": rate / 1e9,
                    "message": note + f": the framework's {kernel} convolution kernel, im2col GEMM shape class MxKxN",
                }
            )
    if peaks.fault_bw:
        rows.append(
            {
                **base,
                "shape": f"fault:{FRESH_THRESHOLD}",
                "time_median_s": FRESH_THRESHOLD / peaks.fault_bw,
                "message": note + ": page faults of a fresh allocation of that many bytes, beyond writing it",
            }
        )
    for ph, s in sorted(peaks.step_overhead_s.items()):
        rows.append({**base, "shape": f"step:{ph}", "time_median_s": s, "message": note + ": fixed cost of one step"})
    for ph, s in sorted(peaks.layer_overhead_s.items()):
        rows.append(
            {**base, "shape": f"layer:{ph}", "time_median_s": s, "message": note + ": fixed cost of one spec layer"}
        )
    return rows


def _num(value: Any) -> float | None:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def peaks_from_rows(rows: Iterable[Mapping[str, Any]], backend: str, device: str, label: str = "") -> MachinePeaks:
    """Rebuilds the peaks :func:`peaks_to_rows` wrote (the last row of each shape wins). ``ValueError`` naming
    what is missing when the rows of (``backend``, ``device``) do not hold a full calibration."""
    gemm: dict[tuple[int, int, int], float] = {}
    bandwidth: dict[int, float] = {}
    steps: dict[str, float] = {}
    layers: dict[str, float] = {}
    op: float | None = None
    rates: dict[str, float] = {}
    conv: dict[str, dict[tuple[int, int, int], float]] = {}
    fault: float | None = None
    basis = MEASURED_BASIS
    threads: int | None = None
    for r in rows:
        if r.get("kind") != CALIBRATION_KIND or r.get("backend") != backend or r.get("device") != device:
            continue
        if r.get("status") not in (None, "", "ok"):
            continue
        shape = str(r.get("shape") or "")
        t = _num(r.get("time_median_s"))
        basis = str(r.get("prediction_basis") or basis)
        msg = str(r.get("message") or "")
        if ", " in msg and " threads)" in msg:
            try:
                threads = int(msg.split(" threads)")[0].rsplit(", ", 1)[1])
            except ValueError:
                pass
        if shape.startswith("gemm:"):
            rate = _num(r.get("achieved_flops_per_s"))
            m, k, n = (int(v) for v in shape[5:].split("x"))
            if rate:
                gemm[(m, k, n)] = rate
        elif shape.startswith("stream:") and t:
            size = int(shape[7:])
            bandwidth[size] = 2.0 * size / t
        elif shape == "dispatch:op" and t is not None:
            op = t
        elif shape.startswith("rate:") and t:
            rates[shape[5:]] = 1e6 / t
        elif shape.startswith("conv-") and _num(r.get("achieved_flops_per_s")):
            kernel, dims = shape[5:].split(":", 1)
            cm, ck, cn = (int(v) for v in dims.split("x"))
            conv.setdefault(kernel, {})[(cm, ck, cn)] = float(r["achieved_flops_per_s"])
        elif shape.startswith("fault:") and t:
            fault = int(shape.split(":", 1)[1]) / t
        elif shape.startswith("step:") and t is not None:
            steps[shape[5:]] = t
        elif shape.startswith("layer:") and t is not None:
            layers[shape[6:]] = t
    missing = [
        what
        for what, ok in (("GEMM rates", gemm), ("stream bandwidth", bandwidth), ("dispatch", op is not None))
        if not ok
    ]
    if missing:
        raise ValueError(
            f"no step-time calibration for {backend} on {device} in the report (missing: {', '.join(missing)}); "
            "reports written by `xfbench run` (suite models) carry it"
        )
    assert op is not None
    return MachinePeaks(
        label=label or f"{device} ({backend}, from report)",
        basis=basis,
        gemm=gemm,
        bandwidth=bandwidth,
        op_overhead_s=op,
        step_overhead_s=steps,
        rates=rates,
        threads=threads,
        fault_bw=fault,
        conv=conv,
        layer_overhead_s=layers,
    )


def layer_and_step_overhead(residual_shallow: float, residual_deep: float, extra_layers: int) -> tuple[float, float]:
    """``(per-layer overhead, step overhead)`` from two probe models' residuals (measured step minus predicted work
    items, no overheads), the deep one ``extra_layers`` layers longer: per layer = the residuals' difference over the
    extra layers, floored at 0; the step's = the shallow residual less its one layer, floored at 0."""
    per_layer = max((residual_deep - residual_shallow) / extra_layers, 0.0) if extra_layers > 0 else 0.0
    return per_layer, max(residual_shallow - per_layer, 0.0)


def calibrated_step_overhead(measured_s: float, probe: StepPrediction) -> float:
    """The fixed step cost implied by a probe model's measured step: measured minus what the work items of the
    probe predict, floored at 0."""
    return max(measured_s - sum(t.seconds for t in probe.items), 0.0)


__all__ = [
    "CALIBRATION_KIND",
    "CONVENTIONS",
    "CONV_GRID",
    "COPY_SIZES",
    "CROSS_MACHINE_BASIS",
    "GEMM_GRID",
    "MEASURED_BASIS",
    "PHASES",
    "PROBE_KINDS",
    "Convention",
    "MachinePeaks",
    "StepPrediction",
    "Work",
    "WorkTime",
    "calibrated_step_overhead",
    "cross_machine",
    "datasheet_peaks",
    "interpolate_rate",
    "layer_and_step_overhead",
    "layer_names",
    "layer_work",
    "median_abs",
    "parse_probe_key",
    "peaks_from_rows",
    "peaks_to_rows",
    "predict_step",
    "probe_key",
    "probe_keys",
    "rel_error",
    "work_time",
]
