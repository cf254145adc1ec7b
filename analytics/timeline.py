"""Memory as a simulated step: the ops of one step in order, each allocating and freeing named tensors.

:func:`simulate` lowers a :class:`~analytics.spec.ModelSpec` to the operators a backend runs (forward layer by
layer, the loss, the backward in reverse, the optimizer update), applies the framework's rules from
:mod:`analytics.timeline_rules` (what each op allocates, what it saves for backward, what its backward
allocates and frees), and walks the resulting event list. The peak is the maximum of the timeline; the
breakdown at the peak is the ledger.

Accounting (tensor level, like PyTorch's ``MemTracker``): every allocation is one tensor's storage
(``numel * element size``; on a CUDA device rounded up to the caching allocator's 512-byte block); a view
allocates nothing; allocator caching, fragmentation and a kernel's internal scratch (oneDNN, cuDNN) are not
tensors and are not in the timeline (``runtime`` stays 0 here: the benchmark suite measures it).

The input batch (and the labels) are inside the timeline, allocated before the step, in their own
category ``input_batch``: ``MemTracker`` sees them only when they are passed to ``track_external``, which the
comparison tests do. A steady-state step (``warm=True``, the default) starts with the parameters, the
previous step's gradients (freed by ``zero_grad(set_to_none=True)`` as the step begins), the optimizer
state and the framework's caches; ``warm=False`` simulates the first step, where the optimizer state is
created by the update.

Categories: ``parameters``, ``gradients`` (parameter gradients, from the moment the backward allocates
them), ``optimizer_state``, ``input_batch``, ``saved_activations`` (forward results some backward op keeps),
``activations`` (forward results nobody saves: alive until consumed; in inference every layer output),
``temporaries`` (activation gradients, backward and optimizer scratch), ``workspace`` (an op's returned
workspace, e.g. oneDNN's LSTM workspace), ``runtime`` (framework-held caches).

PyTorch rules are measured (see :mod:`analytics.timeline_rules`); TensorFlow and MXNet are a first
approximation, flagged in :attr:`Timeline.notes`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from xfbench.analytics import vocab
from xfbench.analytics.layers import UNIT_TYPES
from xfbench.analytics.memory import dtype_bytes
from xfbench.analytics.shapes import infer_shapes, layer_input_shapes
from xfbench.analytics.spec import (
    Conv2D,
    ModelSpec,
    consumers,
    layer_inputs,
)
from xfbench.analytics.timeline_rules import (
    CONV_WORKSPACE,
    FREE_TEMPS,
    MXNET_OPS,
    OPTIMIZER_STATE,
    TF_ONEDNN_OPS,
    TF_OPS,
    TORCH_ACCUMULATE_IN_PLACE,
    TORCH_CUDA_ROUND_BYTES,
    TORCH_OPS,
    Buf,
    OpRule,
    ceil_to,
    element_bytes,
)
from xfbench.analytics.weights import output_kind

CATEGORIES = (
    "parameters",
    "gradients",
    "optimizer_state",
    "input_batch",
    "saved_activations",
    "activations",
    "temporaries",
    "workspace",
    "runtime",
)
PHASES = vocab.PHASES
DEVICES = ("cpu", "gpu")
FRAMEWORKS = ("torch", "tensorflow", "mxnet")
OPTIMIZERS = tuple(vocab.OPTIMIZERS)

_FORWARD = "forward"  # provisional category of a forward result, resolved once the whole step is built


@dataclass(frozen=True)
class Event:
    """One allocation or free. ``live_bytes`` is the total allocated right after it."""

    index: int
    action: str  # "alloc" | "free"
    tensor: str
    category: str
    nbytes: int
    op: str
    stage: str  # "setup" | "forward" | "loss" | "backward" | "optimizer"
    live_bytes: int


@dataclass(frozen=True)
class Timeline:
    """The simulated step: its events, the curve, the peak and the ledger at the peak."""

    model: str
    framework: str
    phase: str
    batch_size: int
    dtype: str
    optimizer: str
    device: str
    events: tuple[Event, ...]
    peak_bytes: int
    peak_index: int  # index into ``events`` (the allocation that reached the peak)
    breakdown: tuple[tuple[str, int], ...]  # category -> bytes alive at the peak, in CATEGORIES order
    notes: tuple[str, ...] = ()

    @property
    def curve(self) -> tuple[int, ...]:
        """Bytes alive after each event (for a plot)."""
        return tuple(e.live_bytes for e in self.events)

    @property
    def peak_event(self) -> Event:
        return self.events[self.peak_index]

    def category(self, name: str) -> int:
        return dict(self.breakdown)[name]

    def breakdown_at(self, index: int) -> dict[str, int]:
        """Bytes alive per category right after event ``index``."""
        return _breakdown(self.events[: index + 1])

    def as_dict(self) -> dict[str, object]:
        return {
            "model": self.model,
            "framework": self.framework,
            "phase": self.phase,
            "batch_size": self.batch_size,
            "dtype": self.dtype,
            "optimizer": self.optimizer,
            "device": self.device,
            "peak_bytes": self.peak_bytes,
            "peak_index": self.peak_index,
            "peak_op": self.peak_event.op,
            "peak_stage": self.peak_event.stage,
            "breakdown": dict(self.breakdown),
            "events": len(self.events),
            "notes": list(self.notes),
        }


def _breakdown(events: Sequence[Event]) -> dict[str, int]:
    out = dict.fromkeys(CATEGORIES, 0)
    for e in events:
        out[e.category] += e.nbytes if e.action == "alloc" else -e.nbytes
    return out


# ---------------------------------------------------------------------------------------------- the machinery


@dataclass
class _Tensor:
    tid: int
    name: str
    nbytes: int
    category: str
    holders: set[str] = field(default_factory=set)


@dataclass
class _Val:
    """A value the program holds: a tensor storage (``tid``, shared by views) and autograd facts."""

    vid: int
    tid: int
    elems: int
    requires_grad: bool = False
    contiguous: bool = True


@dataclass
class _Node:
    """A recorded backward op."""

    op: str
    rule: OpRule
    inputs: dict[str, _Val]
    output: _Val
    sizes: dict[str, int]
    params: dict[str, int]  # parameter name -> bytes of its gradient
    key: str
    shared: dict[str, str] = field(default_factory=dict)  # parameter name -> group of a parameter read twice


class _Program:
    """Storages with holders; a storage is freed when its last holder lets go."""

    def __init__(self, round_to: int = 1) -> None:
        self.tensors: list[_Tensor] = []
        self.steps: list[tuple[str, int, str, str]] = []  # (action, tid, op, stage)
        self.round_to = round_to
        self.saved: set[int] = set()  # storages some backward node kept
        self._vid = 0

    def alloc(self, name: str, nbytes: int, category: str, op: str, stage: str, holder: str = "py") -> int:
        t = _Tensor(len(self.tensors), name, ceil_to(int(nbytes), self.round_to), category, {holder})
        self.tensors.append(t)
        self.steps.append(("alloc", t.tid, op, stage))
        return t.tid

    def hold(self, tid: int, holder: str) -> None:
        self.tensors[tid].holders.add(holder)

    def drop(self, tid: int, holder: str, op: str, stage: str) -> None:
        t = self.tensors[tid]
        if holder not in t.holders:
            return
        t.holders.discard(holder)
        if not t.holders:
            self.steps.append(("free", tid, op, stage))

    def val(self, tid: int, elems: int, requires_grad: bool = False, contiguous: bool = True) -> _Val:
        self._vid += 1
        return _Val(self._vid, tid, elems, requires_grad, contiguous)

    def events(self) -> list[Event]:
        live = 0
        out: list[Event] = []
        for i, (action, tid, op, stage) in enumerate(self.steps):
            t = self.tensors[tid]
            live += t.nbytes if action == "alloc" else -t.nbytes
            out.append(Event(i, action, t.name, t.category, t.nbytes, op, stage, live))
        return out


# ------------------------------------------------------------------------------------------- the lowering


@dataclass
class _Ctx:
    framework: str
    ops: dict[str, OpRule]
    width: int
    batch: int
    training: bool
    device: str
    dispatch_mode: bool
    warm: bool
    threads: int = 1
    kernel_scratch: bool = False
    tf_onednn: bool = False


class _Lowering:
    """Runs a spec through one framework's ops, recording allocations, saves and backward nodes."""

    def __init__(self, prog: _Program, ctx: _Ctx) -> None:
        self.p = prog
        self.c = ctx
        self.nodes: list[_Node] = []
        self.stage = "forward"
        self.params: list[tuple[str, int]] = []  # (name, bytes) in declaration order (model.parameters())
        self.runtime: dict[str, int] = {}  # framework-held caches created in the first step
        self.buffers: list[tuple[str, int]] = []  # model state without gradients (BatchNorm's running statistics)
        self.notes: list[str] = []
        # graphs: a value read by several layers is dropped by Python once its last reader has run
        self.uses: dict[int, int] = {}
        # gradients handed to several values at once (an Add's, a cat's slices): storage -> holders left
        self.grad_refs: dict[int, int] = {}
        # a shared parameter's first gradient, by group (TensorFlow: held back from the update until the second)
        self.shared_grads: dict[str, int] = {}
        self.accumulating: list[tuple[int, int, int]] = []  # (first gradient, second gradient, bytes)

    # ------------------------------------------------------------------ ops

    def run(
        self,
        op: str,
        inputs: dict[str, _Val],
        sizes: dict[str, int],
        *,
        label: str,
        params: dict[str, int] | None = None,
        name: str | None = None,
        contiguous: bool = True,
        shared: dict[str, str] | None = None,
    ) -> dict[str, _Val]:
        """One op: allocate its results, record a backward node if autograd tracks it. Returns its values by
        role (``output`` and ``aux:<name>``); aux results nobody saves are freed right after the op."""
        rule = self.c.ops[op]
        params = params or {}
        main = inputs.get("input")
        needs_grad = any(v.requires_grad for v in inputs.values()) or bool(params)
        recorded = self.c.training and needs_grad
        outs: dict[str, _Val] = {}
        tag = f"{label}:{name or op}"
        if rule.view:
            assert main is not None
            outs["output"] = self.p.val(main.tid, sizes.get("output", main.elems), recorded, contiguous)
            self.p.hold(main.tid, f"py{outs['output'].vid}")
        for buf in rule.forward:
            n = sizes[buf.size] * element_bytes(buf.dtype, self.c.width)
            tid = self.p.alloc(f"{tag}.{buf.role}", n, _FORWARD, tag, self.stage, holder="new")
            outs[buf.role] = self.p.val(tid, sizes[buf.size], recorded and buf.role == "output", contiguous)
        if recorded:
            node = _Node(
                op,
                rule,
                dict(inputs),
                outs["output"],
                dict(sizes),
                params,
                f"node{len(self.nodes)}:{tag}",
                dict(shared or {}),
            )
            for s in rule.saves:
                v = inputs.get(s) or outs.get(s)
                if v is not None:
                    self.p.hold(v.tid, node.key)
                    self.p.saved.add(v.tid)
            self.nodes.append(node)
        for role, v in outs.items():
            if role == "output" and not rule.view:
                self.p.hold(v.tid, f"py{v.vid}")
            # results Python does not keep (indices of an untracked max pool, dropout noise, ...) go now
            self.p.drop(v.tid, "new", tag, self.stage)
        return outs

    def out(
        self,
        op: str,
        inputs: dict[str, _Val],
        sizes: dict[str, int],
        *,
        label: str,
        params: dict[str, int] | None = None,
        name: str | None = None,
        contiguous: bool = True,
        shared: dict[str, str] | None = None,
    ) -> _Val:
        """:meth:`run`, returning the output value."""
        return self.run(op, inputs, sizes, label=label, params=params, name=name, contiguous=contiguous, shared=shared)[
            "output"
        ]

    def drop(self, v: _Val, label: str) -> None:
        """Python no longer references ``v`` (in a graph: once its last reader has let go)."""
        left = self.uses.get(v.vid, 1)
        if left > 1:
            self.uses[v.vid] = left - 1
            return
        self.uses.pop(v.vid, None)
        self.p.drop(v.tid, f"py{v.vid}", label, self.stage)

    def _drop_g(self, tid: int, key: str) -> None:
        """One value lets go of its gradient storage; freed when no value holds it any more."""
        left = self.grad_refs.get(tid, 1)
        if left > 1:
            self.grad_refs[tid] = left - 1
            return
        self.grad_refs.pop(tid, None)
        self.p.drop(tid, "g", key, self.stage)

    def alias(self, v: _Val, elems: int | None = None, contiguous: bool | None = None) -> _Val:
        """A Python-level view of ``v`` that autograd does not need to see (no allocation, no node)."""
        a = self.p.val(v.tid, v.elems if elems is None else elems, v.requires_grad, v.contiguous)
        if contiguous is not None:
            a.contiguous = contiguous
        self.p.hold(a.tid, f"py{a.vid}")
        return a

    def view(self, v: _Val, label: str, elems: int | None = None, contiguous: bool = True) -> _Val:
        """A view autograd records (its backward hands the gradient on)."""
        return self.out(
            "view", {"input": v}, {"output": v.elems if elems is None else elems}, label=label, contiguous=contiguous
        )

    def scratch(self, name: str, elems: int, dtype: str, label: str, category: str = _FORWARD) -> _Val:
        n = elems * element_bytes(dtype, self.c.width)
        tid = self.p.alloc(f"{label}:{name}", n, category, f"{label}:{name}", self.stage, holder="tmp")
        v = self.p.val(tid, elems)
        self.p.hold(tid, f"py{v.vid}")
        self.p.drop(tid, "tmp", label, self.stage)
        return v

    # --------------------------------------------------------------- backward

    def backward(self, loss: _Val) -> None:
        """Reverse-order execution of the recorded nodes (sequential models: reverse creation order)."""
        self.stage = "backward"
        grads: dict[int, int] = {}  # value id -> gradient storage
        seed = self.p.alloc("grad_seed", self.c.width, "temporaries", "ones_like", self.stage, holder="root")
        self.p.hold(seed, "g")
        grads[loss.vid] = seed
        # TensorFlow: each variable's update runs as soon as its gradient exists (the step is one dataflow graph)
        # and the gradient is freed once the update has run, which the simulation puts at the end of the next layer
        # that makes parameter gradients (the update runs beside that layer's backward ops). Measured
        # (tf_step_memory.py --gap E, TensorFlow's allocator records, VGG-11 batch 1): the step's tensor peak is
        # the fc6 weight gradient's allocation, with fc7's gradient still live and no conv gradient yet
        applied_early = self.c.framework == "tensorflow"
        pending: list[int] = []  # the last layer's parameter gradients, whose update runs beside the next one
        for node in reversed(self.nodes):
            g_out = grads.pop(node.output.vid, None)
            if g_out is None:
                self._release(node)
                continue
            made: list[int] = []
            rule = node.rule
            delivered: list[tuple[_Val, int]] = []
            unneeded: list[int] = []
            temps: list[int] = []
            if rule.passthrough or (rule.view and not rule.backward):
                for buf in rule.backward:  # a passthrough op may still produce parameter gradients
                    if buf.role == "temp":  # (and a temporary on the way, e.g. the broadcast's sum)
                        n = node.sizes.get(buf.size, 0) * element_bytes(buf.dtype, self.c.width)
                        if n:
                            temps.append(self.p.alloc(f"{node.key}.temp", n, "temporaries", node.key, self.stage, "g"))
                        continue
                    made += self._param_grad(node, buf)
                # the same storage goes on to every operand that wants it (an Add's two inputs): not freed here
                takers = [src for src in node.inputs.values() if src.requires_grad]
                delivered.extend((src, g_out) for src in takers)
                if len(takers) > 1:
                    self.grad_refs[g_out] = self.grad_refs.get(g_out, 1) + len(takers) - 1
            else:
                for buf in rule.backward:
                    if buf is FREE_TEMPS:
                        for t in temps[::-1]:
                            self.p.drop(t, "g", node.key, self.stage)
                        temps = []
                        continue
                    if buf.role.startswith("param:"):
                        made += self._param_grad(node, buf)
                        continue
                    n = node.sizes.get(buf.size, 0) * element_bytes(buf.dtype, self.c.width)
                    if buf.role in ("temp", "workspace"):
                        if n:  # a workspace of 0 elements: the op does not run (e.g. no input gradient wanted)
                            cat = "temporaries" if buf.role == "temp" else "workspace"
                            temps.append(self.p.alloc(f"{node.key}.{buf.role}", n, cat, node.key, self.stage, "g"))
                        continue
                    operand = node.inputs.get(buf.role.split(":", 1)[1])
                    wanted = operand is not None and operand.requires_grad
                    if not wanted and not buf.always:
                        continue
                    tid = self.p.alloc(f"{node.key}.{buf.role}", n, "temporaries", node.key, self.stage, "g")
                    if wanted:
                        assert operand is not None
                        delivered.append((operand, tid))
                    else:
                        unneeded.append(tid)
            for t in unneeded + temps[::-1]:
                self.p.drop(t, "g", node.key, self.stage)
            if all(tid != g_out for _, tid in delivered):
                self._drop_g(g_out, node.key)
            if self.accumulating:
                made += self._accumulate(node.key)
            self._release(node)
            self._deliver(grads, delivered, node.key)
            if applied_early and made:
                for tid in pending:
                    self.p.drop(tid, "grads", f"{node.key}:apply", self.stage)
                pending = made
        for tid in pending:
            self.p.drop(tid, "grads", "apply", self.stage)
        for tid in list(grads.values()):
            self._drop_g(tid, "backward_end")
        self.p.drop(seed, "root", "backward_end", self.stage)

    def _param_grad(self, node: _Node, buf: Buf) -> list[int]:
        """A parameter gradient: AccumulateGrad steals it (no copy), so it lives until the next zero_grad (torch,
        MXNet); TensorFlow frees it once its update has run (:meth:`backward`).

        A parameter read by two ops (a tied head's matrix, :meth:`tie`): the first gradient becomes the
        parameter's; the second is a temporary, and their sum a new tensor (PyTorch: out of place, measured with
        MemTracker under a dispatch mode and, outside one, by ``benchmarks/diagnostics/tied_grad_probe.py``: three
        tables alive at once). TensorFlow applies that gradient only once both have arrived."""
        name = buf.role.split(":", 1)[1]
        if name not in node.params:
            return []
        group = node.shared.get(name)
        n = node.params[name]
        early = self.c.framework == "tensorflow"
        if group is not None and group in self.shared_grads:
            new = self.p.alloc(f"{node.key}.grad_{name}", n, "temporaries", node.key, self.stage, "g")
            self.accumulating.append((self.shared_grads.pop(group), new, n))
            return []
        tid = self.p.alloc(f"{node.key}.grad_{name}", n, "gradients", node.key, self.stage, "grads")
        if group is not None:
            self.shared_grads[group] = tid
            # TensorFlow: held back from the early update until the second gradient has been added
            return [] if early else [tid]
        return [tid]

    def _accumulate(self, key: str) -> list[int]:
        """The sum of a shared parameter's two gradients, once the second one's op has returned (and let go of its
        incoming gradient): PyTorch out of place, with and without a dispatch mode (MemTracker: aten.add, then both
        addends are freed; outside a mode ``benchmarks/diagnostics/tied_grad_probe.py`` measured the resident peak
        of three tables: 621.9 MB for a 204.8 MB table, 416.5 MB untied); TensorFlow applies the sum now.
        Returns the gradients whose update may run."""
        made: list[int] = []
        for first, new, n in self.accumulating:
            tag = f"{key}:accumulate"
            if self.c.framework == "tensorflow":
                made.append(first)
            elif self.c.framework == "torch" or self.c.dispatch_mode:
                total = self.p.alloc(f"{key}.grad_sum", n, "gradients", tag, self.stage, "grads")
                self.p.drop(first, "grads", tag, self.stage)
                made.append(total)
            self.p.drop(new, "g", tag, self.stage)
        self.accumulating = []
        return made

    def tie(self, label: str, role: str, group: str) -> None:
        """Marks the recorded ops of layer ``label`` whose parameter ``role`` is shared under ``group`` (the
        embedding of a tied head): their gradients accumulate into one (see :meth:`_param_grad`)."""
        for node in self.nodes:
            if node.key.split(":", 1)[1].startswith(f"{label}:") and role in node.params:
                node.shared[role] = group

    def _deliver(self, grads: dict[int, int], delivered: list[tuple[_Val, int]], key: str) -> None:
        """Hands gradients to the values they belong to; a second gradient for one value is accumulated."""
        late: list[int] = []
        for val, tid in delivered:
            prev = grads.get(val.vid)
            if prev is None:
                grads[val.vid] = tid
            elif (
                self.c.dispatch_mode or not TORCH_ACCUMULATE_IN_PLACE or prev in self.grad_refs or tid in self.grad_refs
            ):
                # out of place (also when an addend is shared with another value): the sum is a new tensor, both
                # addends are let go
                n = self.p.tensors[tid].nbytes
                grads[val.vid] = self.p.alloc(f"{key}.grad_sum", n, "temporaries", f"{key}:accumulate", self.stage, "g")
                self._drop_g(prev, key)
                late.append(tid)
            else:
                self.p.drop(tid, "g", key, self.stage)  # added in place into the first gradient
        for tid in late:
            self._drop_g(tid, key)

    def _release(self, node: _Node) -> None:
        """The node ran: what it saved is let go (``release_variables`` after the backward op)."""
        for t in self.p.tensors:
            if node.key in t.holders:
                self.p.drop(t.tid, node.key, node.key, self.stage)


# --------------------------------------------------------------------------------------- PyTorch lowering

_TORCH_ACT = {
    "relu": "relu",
    "sigmoid": "sigmoid",
    "tanh": "tanh",
    "softmax": "_softmax",
    "gelu": "gelu",  # F.gelu(x): aten.gelu, approximate="none"
    "gelu_tanh": "gelu",  # F.gelu(x, approximate="tanh"): the same op and rule
}
#: TensorFlow's and MXNet's activation ops per kind (analytics/timeline_rules.py TF_OPS, MXNET_OPS)
_TF_ACT = {
    "relu": "Relu",
    "sigmoid": "Sigmoid",
    "tanh": "Tanh",
    "softmax": "Softmax",
    "gelu": "Gelu",
    "gelu_tanh": "GeluTanh",
}
_MXNET_ACT = {"softmax": "softmax", "gelu": "LeakyReLU_gelu", "gelu_tanh": "gelu_tanh"}


class _TorchModel:
    """PyTorch's lowering: what every layer type's ``simulate`` (``analytics/layers/``) calls to declare parameters,
    activations, pooling windows and the loss the way ``backends/torch/model.py`` runs them."""

    def __init__(self, low: _Lowering, spec: ModelSpec) -> None:
        self.low = low
        self.spec = spec
        self.b = low.c.batch

    def param(self, label: str, name: str, elems: int) -> int:
        n = elems * self.low.c.width
        self.low.params.append((f"{label}.{name}", n))
        return n

    def act(self, label: str, kind: str, x: _Val) -> _Val:
        return self.low.out(
            _TORCH_ACT[kind], {"input": x}, {"input": x.elems, "output": x.elems}, label=label, name=kind
        )

    def window(self, label: str, is_max: bool, x: _Val, out_elems: int) -> _Val:
        op = "avg_pool2d"
        if is_max:  # training runs max_pool2d_with_indices (measured, even without grad); inference max_pool2d
            op = "max_pool2d_with_indices" if self.low.c.training else "max_pool2d"
        return self.low.out(op, {"input": x}, {"input": x.elems, "output": out_elems}, label=label)

    def count_cache(self, label: str, hw: tuple[int, int], pads: tuple[int, int, int, int], out_hw: int) -> None:
        """PoolLayer._cell_count: ``ones`` -> pad -> window sum, cached on the module for good."""
        low = self.low
        key = f"{label}:count"
        if key in low.runtime:
            return
        n = out_hw * low.c.width
        low.runtime[key] = n
        if low.c.warm:
            return  # created by an earlier step: allocated in the setup
        t, bt, lf, rt = pads
        ones = low.scratch("ones", hw[0] * hw[1], "x", label)
        padded = low.scratch("ones_padded", (hw[0] + t + bt) * (hw[1] + lf + rt), "x", label)
        low.drop(ones, label)
        count = low.scratch("count", out_hw, "x", label, category="runtime")
        low.p.hold(count.tid, "module")
        low.drop(padded, label)
        low.drop(count, label)

    def loss(self, y: _Val, out_elems: int) -> _Val:
        """loss_fn in backends/torch/model.py, by the spec's output kind; returns the loss value."""
        low = self.low
        low.stage = "loss"
        label = "loss"
        kind = output_kind(self.spec)
        sizes = {"input": out_elems, "output": out_elems, "scalar": 1}
        if kind == "probs":
            cl = low.out("clamp", {"input": y}, sizes, label=label)
            lg = low.out("log", {"input": cl}, sizes, label=label)
            low.drop(cl, label)
            loss = low.out("nll_loss_forward", {"input": lg}, sizes, label=label)
            low.drop(lg, label)
        elif kind == "logits":
            ls = low.out("_log_softmax", {"input": y}, sizes, label=label)
            loss = low.out("nll_loss_forward", {"input": ls}, sizes, label=label)
            low.drop(ls, label)
        else:
            loss = low.out("mse_loss", {"input": y}, sizes, label=label)
        low.drop(y, label)
        return loss


# ------------------------------------------------------------------- TensorFlow / MXNet (first approximation)


class _ApproxModel(_TorchModel):
    """TensorFlow and MXNet: the same walk with their op tables and activations (see
    :mod:`analytics.timeline_rules` for which rules are measured and which are a first approximation).

    TensorFlow (Keras): ``same`` padding inside the op (no copy), ``ZeroPadding2D`` for int padding, whose input
    is freed once the Pad has run; the bias add and the activation write into the conv/dense output (measured,
    ``TF_OPS``). MXNet (Gluon): explicit pad copies as PyTorch, activations in place on the conv/dense output
    (planner ``FInplaceOption``).
    """

    def act(self, label: str, kind: str, x: _Val) -> _Val:
        fw = self.low.c.framework
        op = _TF_ACT[kind] if fw == "tensorflow" else _MXNET_ACT.get(kind, "Activation")
        return self.low.out(op, {"input": x}, {"input": x.elems, "output": x.elems}, label=label, name=kind)

    def loss(self, y: _Val, out_elems: int) -> _Val:
        low = self.low
        low.stage = "loss"
        # softmax cross-entropy / MSE: one buffer of the output's size kept for its gradient, a scalar loss
        tmp = low.out(
            "softmax" if low.c.framework == "mxnet" else "Softmax",
            {"input": y},
            {"input": out_elems, "output": out_elems},
            label="loss",
            name="loss_terms",
        )
        low.drop(y, "loss")
        return tmp


# ------------------------------------------------------------------------------------------------- the API


def simulate(
    spec: ModelSpec,
    batch_size: int,
    phase: str = "training",
    dtype: str = "float32",
    optimizer: str = "sgd",
    framework: str = "torch",
    *,
    device: str = "cpu",
    warm: bool = True,
    dispatch_mode: bool = False,
    threads: int = 1,
    kernel_scratch: bool = False,
    tf_onednn: bool = False,
) -> Timeline:
    """Simulates one step and returns its :class:`Timeline`.

    ``dispatch_mode=True`` reproduces what PyTorch runs while a ``TorchDispatchMode`` (such as
    ``MemTracker``) is active: composite ops take their out-of-place paths (``isTensorSubclassLike`` is true
    for every tensor then), i.e. the bias add of a linear layer on a non-contiguous 3-D input and gradient
    accumulation allocate a new tensor. ``threads``: the framework's intra-op threads, which TensorFlow's
    conv-gradient scratch depends on (an input: the prediction never reads the host; the benchmark harness passes
    the frameworks' default, this machine's logical cores, which its rows record as ``cpu_cores``).
    ``kernel_scratch=True``: the process-level step, which adds memory a kernel holds while it runs that is no
    tensor (torch CPU convolutions: oneDNN's blocked copies); off, and ignored under ``dispatch_mode``, the step is
    the tensor level ``MemTracker`` sees. ``tf_onednn=True`` (TensorFlow only): TensorFlow's oneDNN ops run
    (:data:`analytics.timeline_rules.TF_ONEDNN_OPS`), as on CPUs with AVX512_VNNI by default.
    Raises ``ValueError`` / :class:`SpecError` on bad arguments.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size <= 0:
        raise ValueError(f"batch size must be a positive integer, got {batch_size!r}")
    if phase not in PHASES:
        raise ValueError(f"unknown phase {phase!r}; allowed: {', '.join(PHASES)}")
    if framework not in FRAMEWORKS:
        raise ValueError(f"unknown framework {framework!r}; allowed: {', '.join(FRAMEWORKS)}")
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {optimizer!r}; allowed: {', '.join(OPTIMIZERS)}")
    if device not in DEVICES:
        raise ValueError(f"unknown device {device!r}; allowed: {', '.join(DEVICES)}")
    width = dtype_bytes(dtype)
    training = phase == "training"
    ops = dict({"torch": TORCH_OPS, "tensorflow": TF_OPS, "mxnet": MXNET_OPS}[framework])
    for unit_type in UNIT_TYPES:  # each unit type's own rules (analytics/layers/)
        ops.update(unit_type.RULES.get(framework, {}))
    if framework == "tensorflow" and tf_onednn:
        ops.update(TF_ONEDNN_OPS)
    round_to = TORCH_CUDA_ROUND_BYTES if (framework == "torch" and device == "gpu") else 1
    prog = _Program(round_to)
    if isinstance(threads, bool) or not isinstance(threads, int) or threads <= 0:
        raise ValueError(f"threads must be a positive integer, got {threads!r}")
    ctx = _Ctx(
        framework,
        ops,
        width,
        batch_size,
        training,
        device,
        dispatch_mode and framework == "torch",
        warm,
        threads,
        kernel_scratch and not dispatch_mode,
        tf_onednn and framework == "tensorflow",
    )
    low = _Lowering(prog, ctx)
    notes: list[str] = []
    if framework == "tensorflow":
        notes.append(
            "tensorflow rules: the conv, bias add, relu, padding and gradient-lifetime rules are measured (allocator "
            "records, memray; analytics/timeline_rules.py TF_OPS), the others read from its gradient functions"
        )
    elif framework != "torch":
        notes.append(f"{framework} rules are a first approximation (not measured)")
    if CONV_WORKSPACE[(framework, device)] is None and any(isinstance(layer, Conv2D) for layer in spec.layers):
        notes.append(f"convolution workspace on {framework} {device} is not modelled (not measured)")
    if device == "gpu":
        notes.append("GPU rules are a first approximation (not measured): foreach optimizer temporaries, dropout mask")
    if dtype != "float32":
        notes.append(f"{dtype}: rules measured in float32 only; sizes scale with the element width")

    model_cls = _TorchModel if framework == "torch" else _ApproxModel
    model = model_cls(low, spec)
    outs = infer_shapes(spec)
    x_elems = batch_size * math.prod(spec.input_shape)
    x_tid = prog.alloc(
        "x", x_elems * (8 if spec.input_dtype == "int64" else width), "input_batch", "setup", "setup", "batch"
    )
    mark = len(prog.steps)  # what exists before the step is spliced in here once the walk has declared it

    # ---- forward (the lowering declares the parameters and caches as it meets them)
    v = prog.val(x_tid, x_elems)
    prog.hold(x_tid, f"py{v.vid}")
    readers = consumers(spec)
    values: dict[int, _Val] = {-1: v}
    low.uses[v.vid] = sum(srcs.count(-1) for srcs in layer_inputs(spec))
    for i, (layer, srcs, ins, o) in enumerate(zip(spec.layers, layer_inputs(spec), layer_input_shapes(spec), outs)):
        # the type's own ops (analytics/layers/), through this framework's lowering
        v = layer.simulate(model, f"{i}:{layer.label}", [values[j] for j in srcs], ins, o)
        values[i] = v
        if len(readers[i]) > 1:
            low.uses[v.vid] = len(readers[i])
    if training:
        loss = model.loss(v, batch_size * math.prod(outs[-1]))
        low.backward(loss)
        low.stage = "optimizer"
        _optimizer(prog, framework, optimizer, device, low.params, warm)
    # (inference: the output is returned to the caller and stays alive)

    # ---- setup: parameters, labels, and in a steady state the optimizer state, the previous step's gradients
    # (freed by zero_grad(set_to_none=True) as the step begins) and the framework's caches
    tail, prog.steps = prog.steps[mark:], prog.steps[:mark]
    for name, n in low.params + low.buffers:
        prog.alloc(f"param:{name}", n, "parameters", "setup", "setup", "model")
    if training:
        kind = output_kind(spec)
        y_elems = batch_size * (math.prod(outs[-1]) if kind == "regression" else math.prod(outs[-1][:-1]))
        prog.alloc("y", y_elems * (width if kind == "regression" else 8), "input_batch", "setup", "setup", "batch")
    if warm:
        for name, n in low.runtime.items():
            prog.alloc(name, n, "runtime", "setup", "setup", "module")
    if training and warm:
        slots, scalars = OPTIMIZER_STATE[optimizer]
        for name, n in low.params:
            for k in range(slots):
                prog.alloc(f"opt:{name}:{k}", n, "optimizer_state", "setup", "setup", "optimizer")
            for k in range(scalars if framework == "torch" else 0):
                prog.alloc(f"opt:{name}:step{k}", 4, "optimizer_state", "setup", "setup", "optimizer")
        prev = [prog.alloc(f"grad:{name}", n, "gradients", "setup", "setup", "prev") for name, n in low.params]
        for tid in prev:
            prog.drop(tid, "prev", "zero_grad(set_to_none=True)", "forward")
    prog.steps += tail
    notes.extend(low.notes)
    return _finish(spec, framework, phase, batch_size, dtype, optimizer, device, prog, notes)


def _optimizer(
    prog: _Program, framework: str, optimizer: str, device: str, params: list[tuple[str, int]], warm: bool
) -> None:
    """The update (torch/optim single-tensor loop on CPU; foreach on a GPU, first approximation)."""
    stage = "optimizer"
    if optimizer == "sgd":
        return
    if not warm:
        for name, n in params:
            if optimizer == "adam":
                prog.alloc(f"opt:{name}:step", 4, "optimizer_state", "init_state", stage, "optimizer")
                prog.alloc(f"opt:{name}:exp_avg", n, "optimizer_state", "zeros_like", stage, "optimizer")
                prog.alloc(f"opt:{name}:exp_avg_sq", n, "optimizer_state", "zeros_like", stage, "optimizer")
            elif framework == "torch":
                # momentum, first step: buf = torch.clone(grad).detach(), created inside the update loop
                prog.alloc(f"opt:{name}:momentum", n, "optimizer_state", "clone", stage, "optimizer")
            else:
                prog.alloc(f"opt:{name}:momentum", n, "optimizer_state", "init_state", stage, "optimizer")
    if optimizer != "adam":
        return
    if framework == "torch" and device == "cpu":
        prev: int | None = None
        for name, n in params:
            sq = prog.alloc(f"adam:{name}:sqrt", n, "temporaries", "sqrt", stage, "tmp")
            denom = prog.alloc(f"adam:{name}:denom", n, "temporaries", "div", stage, "tmp")
            prog.drop(sq, "tmp", "div", stage)
            if prev is not None:
                prog.drop(prev, "tmp", "add_", stage)
            prev = denom
        if prev is not None:
            prog.drop(prev, "tmp", "addcdiv_", stage)
        return
    # foreach (torch on a GPU) and the other frameworks: one temporary of every parameter at once
    tmps = [prog.alloc(f"adam:{name}:tmp", n, "temporaries", "adam_update", stage, "tmp") for name, n in params]
    for t in tmps:
        prog.drop(t, "tmp", "adam_update", stage)


def _finish(
    spec: ModelSpec,
    framework: str,
    phase: str,
    batch: int,
    dtype: str,
    optimizer: str,
    device: str,
    prog: _Program,
    notes: list[str],
) -> Timeline:
    # Forward results: saved for backward if some node kept them, otherwise plain activations.
    for t in prog.tensors:
        if t.category == _FORWARD:
            t.category = "saved_activations" if t.tid in prog.saved else "activations"
    events = prog.events()
    peak_index = max(range(len(events)), key=lambda i: (events[i].live_bytes, -i))
    return Timeline(
        model=spec.name,
        framework=framework,
        phase=phase,
        batch_size=batch,
        dtype=dtype,
        optimizer=optimizer,
        device=device,
        events=tuple(events),
        peak_bytes=events[peak_index].live_bytes,
        peak_index=peak_index,
        breakdown=tuple(_breakdown(events[: peak_index + 1]).items()),
        notes=tuple(dict.fromkeys(notes)),
    )
