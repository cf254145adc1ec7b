"""Per-framework memory rules for the step simulator (:mod:`analytics.timeline`), as data.

Each rule says, for one operator the framework runs, what its forward allocates, what it keeps for the
backward pass, and what its backward allocates. Sizes are element counts of a named operand (``input``,
``output``, ``weight``, ...) in a named element type (``x`` = the model's dtype, ``bool`` = 1 byte, ``int64``
= 8 bytes). The simulator (:mod:`analytics.timeline`) lowers each spec layer to the operators the backend
runs and walks these rules; this module imports nothing but the standard library and the vocabulary
(:mod:`analytics.vocab`: element widths, optimizers).

Bases, per framework:

* **PyTorch** (``TORCH_OPS``): what each aten op saves and what its backward returns come from
  ``tools/autograd/derivatives.yaml`` (pytorch/pytorch) and were checked, op by op, against the storage
  events that ``torch.distributed._tools.mem_tracker.MemTracker`` records for one step of this repo's
  torch backend (torch 2.13 CPU, float32): for every op below, the allocations, the frees and their order
  matched the trace. Which ops a layer runs comes from ``backends/torch/model.py``.
* **TensorFlow** (``TF_OPS``): what a gradient function reads (``tensorflow/python/ops/nn_grad.py``,
  ``math_grad.py``); Keras pads ``same`` inside the op (no padding copy). Measured, each stated at its rule: the
  bias add and ReLU in place (forward and ReluGrad), the explicit Pad, the conv-gradient ops' im2col buffers and
  their concurrency, the weight gradients' lifetime; the rest is not measured.
* **MXNet** (``MXNET_OPS``): FIRST APPROXIMATION, not measured: the gradient inputs of its operators
  (``src/operator/nn/*.cc``, ``FGradient``) and its graph planner (``src/nnvm/plan_memory.cc``), which
  runs element-wise activations in place and shares buffers whose lifetimes do not overlap.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from xfbench.analytics import vocab

#: Bytes of the non-model element types rules refer to; ``x`` is the model's dtype width.
ELEMENT_BYTES = vocab.ELEMENT_BYTES


@dataclass(frozen=True)
class Buf:
    """One allocation: ``role`` names what it becomes, ``size`` the operand whose element count it has.

    Roles: ``output`` / ``aux:<name>`` (forward results), ``grad:<operand>`` (the gradient of a forward
    operand, handed to the op that produced it), ``param:<name>`` (a parameter gradient), ``temp`` (freed
    when the op finishes). ``always``: allocated even when that operand needs no gradient (freed at once).
    """

    role: str
    size: str
    dtype: str = "x"
    always: bool = False


FREE_TEMPS = Buf("free_temps", "-")  # marker inside a backward sequence: the temporaries so far are freed here


@dataclass(frozen=True)
class OpRule:
    """One operator: forward results, operands kept for backward, backward allocations (in order)."""

    forward: tuple[Buf, ...]
    saves: tuple[str, ...]
    backward: tuple[Buf, ...]
    basis: str
    view: bool = False  # the output aliases the input (no allocation)
    passthrough: bool = False  # the backward hands the incoming gradient on unchanged (no allocation)


_OUT = (Buf("output", "output"),)
_GRAD_IN = (Buf("grad:input", "input"),)
_GRAD_IN_W = (Buf("grad:input", "input"), Buf("param:weight", "weight"))
_DY = "tools/autograd/derivatives.yaml"

# ------------------------------------------------------------------------------------------------- PyTorch

TORCH_OPS: dict[str, OpRule] = {
    "constant_pad_nd": OpRule(
        _OUT,
        (),
        _GRAD_IN,
        f"{_DY} constant_pad_nd: constant_pad_nd_backward (a negative pad: a copy of the input's size)",
    ),
    "convolution": OpRule(
        _OUT,
        ("input",),
        (
            Buf("grad:input", "input"),
            Buf("param:weight", "weight"),
            Buf("param:bias", "bias"),
            Buf("workspace", "scratch"),
        ),
        f"{_DY} convolution: convolution_backward(grad, input, weight, ...) saves input and weight; one op returns "
        "grad_input (skipped when the input needs no gradient), grad_weight, grad_bias",
    ),
    "relu": OpRule(_OUT, ("output",), _GRAD_IN, f"{_DY} relu: threshold_backward(grad, result, 0) (saves the result)"),
    "sigmoid": OpRule(_OUT, ("output",), _GRAD_IN, f"{_DY} sigmoid: sigmoid_backward(grad, result)"),
    "tanh": OpRule(_OUT, ("output",), _GRAD_IN, f"{_DY} tanh: tanh_backward(grad, result)"),
    "_softmax": OpRule(_OUT, ("output",), _GRAD_IN, f"{_DY} _softmax: _softmax_backward_data(grad, result, ...)"),
    "_log_softmax": OpRule(
        _OUT, ("output",), _GRAD_IN, f"{_DY} _log_softmax: _log_softmax_backward_data(grad, result, ...)"
    ),
    "addmm": OpRule(
        _OUT,
        ("input",),
        (Buf("grad:input", "input"), Buf("param:weight", "weight"), Buf("param:bias", "bias")),
        f"{_DY} addmm: mat1 (the input) saved for mm_mat2_backward, mat2 (the weight) for mm_mat1_backward; "
        "backward = mm (grad_input), mm (grad_weight), sum (grad_bias), three ops in that order",
    ),
    "mm": OpRule(
        _OUT,
        ("input",),
        (Buf("param:weight", "weight"), Buf("grad:input", "input")),
        f"{_DY} mm: self kept for the weight gradient (F.linear without a bias = matmul = mm); measured with "
        "MemTracker: the weight gradient is made first, then the input gradient",
    ),
    "mm_folded": OpRule(
        _OUT,
        ("input",),
        (Buf("param:weight", "weight"), Buf("grad:input", "input")),
        "at::matmul on a 3-D input (aten/src/ATen/native/LinearAlgebra.cpp _matmul_impl, folded to one mm): "
        "measured with MemTracker, its backward makes the weight gradient first, then the input gradient",
    ),
    "unsafe_view": OpRule(
        (),
        (),
        _GRAD_IN,
        "the fold's result viewed back to 3-D (_unsafe_view): measured with MemTracker, on a non-contiguous "
        "input and without a bias its backward copies the incoming gradient (aten.clone); with a bias, or on "
        "a contiguous input, it does not (cause not yet isolated)",
        view=True,
    ),
    "add_bias": OpRule(
        _OUT,
        (),
        (Buf("param:bias", "bias"),),
        f"{_DY} add.Tensor: the bias gradient is the broadcast reduction (sum); the other operand's gradient is "
        "the incoming one (no copy). aten/src/ATen/native/Linear.cpp: linear on a non-contiguous 3-D input is "
        "matmul + add_ (in place), or out-of-place add while a TorchDispatchMode (MemTracker) is active",
        passthrough=True,
    ),
    "add_bias_": OpRule(
        (),
        (),
        (Buf("param:bias", "bias"),),
        "the in-place output.add_(bias) of aten/src/ATen/native/Linear.cpp (no allocation); the bias gradient is a sum",
        view=True,
        passthrough=True,
    ),
    "linear": OpRule(
        _OUT,
        (),
        (),
        "inference mode: aten.linear is one op to an observer (its internal copies are not tensors it sees)",
    ),
    "max_pool2d_with_indices": OpRule(
        (Buf("output", "output"), Buf("aux:indices", "output", "int64")),
        ("input", "aux:indices"),
        _GRAD_IN,
        f"{_DY} max_pool2d_with_indices: max_pool2d_with_indices_backward(grad, self, ..., result1) saves the "
        "input and the int64 indices; measured: on CPU training runs this op even when the input needs no "
        "gradient (the indices are then freed at once)",
    ),
    "max_pool2d": OpRule(
        _OUT, ("input",), _GRAD_IN, "inference mode: aten.max_pool2d returns the pooled output only (no indices)"
    ),
    "avg_pool2d": OpRule(_OUT, ("input",), _GRAD_IN, f"{_DY} avg_pool2d: avg_pool2d_backward(grad, self, ...)"),
    "div_count": OpRule(
        _OUT,
        (),
        _GRAD_IN,
        f"{_DY} div.Tensor: self's gradient is grad / other (other, the cached count, is kept by the module)",
    ),
    "mean_hw": OpRule(
        _OUT, (), _GRAD_IN, f"{_DY} mean.dim: sum_backward(...) / numel (expand, then one division: the input's size)"
    ),
    "dropout": OpRule(
        (Buf("aux:noise", "input"), Buf("output", "output")),
        ("aux:noise",),
        _GRAD_IN,
        "aten/src/ATen/native/Dropout.cpp _dropout_impl (CPU): noise = empty_like(input).bernoulli_().div_(), "
        f"output = input * noise; {_DY} mul.Tensor keeps the noise for grad * noise",
    ),
    "native_dropout": OpRule(
        (Buf("output", "output"), Buf("aux:mask", "output", "bool")),
        ("aux:mask",),
        _GRAD_IN,
        f"{_DY} native_dropout (CUDA): native_dropout_backward(grad, result1 (bool mask), scale). NOT MEASURED",
    ),
    "clamp": OpRule(
        _OUT,
        ("input",),
        (
            Buf("temp", "scalar"),
            Buf("temp", "output", "bool"),
            Buf("temp", "output", "bool"),
            Buf("grad:input", "input"),
        ),
        f"{_DY} clamp: clamp_backward(grad, self, min, max) = where((self >= min) & (self <= max), grad, 0): "
        "measured as scalar_tensor, ge, le (bool masks) and where",
    ),
    "log": OpRule(_OUT, ("input",), _GRAD_IN, f"{_DY} log: grad.div(self.conj())"),
    "nll_loss_forward": OpRule(
        (Buf("output", "scalar"), Buf("aux:total_weight", "scalar")),
        ("input", "aux:total_weight"),
        _GRAD_IN,
        f"{_DY} nll_loss_forward: nll_loss_backward(grad, self, target, weight, ..., total_weight)",
    ),
    "mse_loss": OpRule(
        _OUT,
        ("input",),
        _GRAD_IN,
        "aten/src/ATen/native/Loss.cpp mse_loss: the unreduced loss (the input's size) is computed and the mean "
        "returned as a 0-d view of it, so the whole buffer lives as long as the loss (measured: "
        f"loss.untyped_storage().nbytes() == input bytes); {_DY} mse_loss: mse_loss_backward(grad, self, target)",
    ),
    "mkldnn_rnn_layer": OpRule(
        (
            Buf("output", "output"),
            Buf("aux:hy", "state"),
            Buf("aux:cy", "state"),
            Buf("aux:workspace", "workspace", "float32"),
        ),
        ("input", "hx", "cx", "output", "aux:hy", "aux:cy", "aux:workspace"),
        (
            Buf("grad:input", "input", always=True),
            Buf("param:weight_ih", "weight_ih"),
            Buf("param:weight_hh", "weight_hh"),
            Buf("param:bias_ih", "bias"),
            Buf("param:bias_hh", "bias"),
            Buf("grad:hx", "state", always=True),
            Buf("grad:cx", "state", always=True),
        ),
        "aten/src/ATen/native/mkldnn/RNN.cpp mkldnn_rnn_layer (CPU LSTM in training): returns output, hy, cy and "
        "oneDNN's workspace (see lstm_workspace_bytes); mkldnn_rnn_layer_backward returns the gradients of "
        "input, both weights, both biases, hx and cx (measured with MemTracker, all seven every time)",
    ),
    "select_backward": OpRule(
        (),
        (),
        _GRAD_IN,
        f"{_DY} select.int: select_backward(grad, self.sym_sizes(), dim, index): a zero tensor of the input's size",
        view=True,
    ),
    "embedding": OpRule(
        _OUT,
        (),
        (Buf("param:weight", "weight"),),
        f"{_DY} embedding: embedding_backward(grad, indices, ...) -> embedding_dense_backward (a (vocab, dim) "
        "gradient); the indices are the model input, alive anyway",
    ),
    "clone": OpRule(_OUT, (), (), f"{_DY} clone: the gradient passes through", passthrough=True),
    "view": OpRule((), (), (), f"{_DY} view/reshape/transpose/select: the gradient is a view", view=True),
    # LocalResponseNorm, torch.nn.functional.local_response_norm (4-D): div = x*x; pad; avg_pool3d;
    # div*alpha + k; pow(beta); x / div.
    "mul_self": OpRule(
        _OUT,
        ("input",),
        (Buf("grad:input", "input"), Buf("grad:input", "input")),
        f"{_DY} mul.Tensor with both operands x: grad * other and grad * self, two gradients of x",
    ),
    "avg_pool3d": OpRule(_OUT, ("input",), _GRAD_IN, f"{_DY} avg_pool3d: avg_pool3d_backward(grad, self, ...)"),
    "mul_scalar": OpRule(_OUT, (), _GRAD_IN, f"{_DY} mul.Tensor by a wrapped scalar: grad * other"),
    "add_scalar": OpRule(
        _OUT, (), (), f"{_DY} add.Tensor with a scalar: the gradient passes through", passthrough=True
    ),
    "pow_scalar": OpRule(
        _OUT,
        ("input",),
        (Buf("temp", "input"), Buf("temp", "input"), Buf("grad:input", "input")),
        f"{_DY} pow.Tensor_Scalar: pow_backward(grad, self, exponent) = grad * (exponent * self.pow(exponent - 1))",
    ),
    "div": OpRule(
        _OUT,
        ("input", "other"),
        (
            Buf("temp", "input"),
            Buf("temp", "input"),
            Buf("temp", "input"),
            Buf("grad:other", "input"),
            FREE_TEMPS,
            Buf("grad:input", "input"),
        ),
        f"{_DY} div.Tensor: other: -grad * ((self / other) / other) (three temporaries), self: grad / other",
    ),
    # The transformer's ops (backends/torch/model.py; checked with MemTracker on gpt2_tiny and bert_tiny,
    # tests/test_transformer_memory.py)
    "gelu": OpRule(
        _OUT,
        ("input",),
        _GRAD_IN,
        f"{_DY} gelu: gelu_backward(grad, self, approximate) (saves the input; erf and tanh forms alike)",
    ),
    "bmm": OpRule(
        _OUT,
        ("input", "other"),
        (Buf("grad:other", "other"), Buf("grad:input", "input")),
        f"{_DY} bmm: self: grad.bmm(mat2.transpose(1, 2)), mat2: self.transpose(1, 2).bmm(grad) (saves both "
        "operands); at::matmul of two 4-D tensors reshapes them to 3-D (a copy of a non-viewable operand, "
        "aten.clone) and runs aten.bmm; measured with MemTracker: mat2's gradient is made first",
    ),
    "matmul": OpRule(
        _OUT,
        (),
        (),
        "inference mode under a TorchDispatchMode: aten.matmul is one op to an observer (its reshape copies and "
        "bmm are not tensors it sees; measured with MemTracker)",
    ),
    "view_grad_copy": OpRule(
        (),
        (),
        _GRAD_IN,
        f"{_DY} _unsafe_view/view: grad.reshape(self.sizes()); the gradient arriving through a transpose is not "
        "viewable, so the reshape copies it (aten.clone; measured with MemTracker after each head split and merge)",
        view=True,
    ),
}

#: PyTorch's gradient accumulation when one tensor gets several gradients (``torch/csrc/autograd/input_buffer.cpp``):
#: in place into the first buffer, except while a TorchDispatchMode is active (``isTensorSubclassLike`` is then
#: true for every tensor), where an out-of-place ``add`` allocates the sum (measured with MemTracker).
TORCH_ACCUMULATE_IN_PLACE = True

# Optimizer updates, ``torch/optim/{sgd,adam}.py``. On CPU the default is the single-tensor loop (foreach
# kernels are used only on CUDA-like devices, ``torch/optim/optimizer.py _default_to_fused_or_foreach``).
# Entries: state slots created per parameter on the first step (element counts relative to the parameter,
# and fixed-size scalars), and the temporaries of the update. Measured with MemTracker on CPU (float32):
# sgd allocates nothing; momentum clones each gradient into its buffer on the first step; adam creates a
# 0-d float32 ``step`` and two zero slots per parameter, then per parameter ``denom = (exp_avg_sq.sqrt() /
# bias_correction2_sqrt).add_(eps)``: a sqrt temporary and the division's result, the previous parameter's
# ``denom`` being freed only after the new one exists (the loop variable is rebound).
#: Per optimizer: state tensors per parameter (analytics/vocab.py's slots) and PyTorch's 0-d step counters
#: (Adam's ``state["step"]``).
OPTIMIZER_STATE: dict[str, tuple[int, int]] = {
    name: (opt.slots, 1 if name == "adam" else 0) for name, opt in vocab.OPTIMIZERS.items()
}
"""Per optimizer: (state tensors of the parameter's size, 0-d float32 ``step`` tensors) per parameter."""

#: Convolution workspace per (framework, device) at tensor level: ``0`` where none exists as a tensor,
#: ``None`` where it is not modelled (the simulation then says so in its notes). Per-algorithm sizes are
#: chosen at run time (cuDNN heuristics or autotuning, oneDNN's scratchpad), so none is a constant here.
CONV_WORKSPACE: dict[tuple[str, str], int | None] = {
    # oneDNN keeps its scratchpad inside the primitive, not as an ATen tensor: MemTracker sees none (measured:
    # every catalog model matches MemTracker without it). The process-level simulation adds oneDNN's blocked copies
    # (torch_onednn_conv_scratch_elems, torch_onednn_conv_forward_scratch_elems; simulate(kernel_scratch=True)).
    ("torch", "cpu"): 0,
    # cuDNN's workspace is taken from the caching allocator inside the op (not a returned tensor): invisible to
    # MemTracker, visible to torch.cuda.max_memory_allocated; depends on the algorithm. Not measured.
    ("torch", "gpu"): None,
    # TensorFlow on CPU (oneDNN's ops off, the default without AVX512_VNNI/AMX): the forward Conv2D allocates no
    # temporary tensor (measured: the inference tensor peak is one layer's input + output, gap C); the gradient
    # ops' im2col buffers are in the Conv2D rule (tf_conv_grad_col_elems, gap D).
    ("tensorflow", "cpu"): 0,
    ("tensorflow", "gpu"): None,
    # MXNet: Convolution's temp space from the resource manager, capped by its ``workspace`` argument. Not measured.
    ("mxnet", "cpu"): None,
    ("mxnet", "gpu"): None,
}

#: oneDNN's channel block for float32 on AVX2 CPUs (``nChw8c``); AVX-512 CPUs use 16.
ONEDNN_AVX2_BLOCK = 8


def torch_onednn_conv_scratch_elems(
    batch: int,
    in_ch_hw: tuple[int, int],
    out_ch_hw: tuple[int, int],
    kernel: tuple[int, int],
    stride: tuple[int, int],
    grad_input: bool,
    block: int = ONEDNN_AVX2_BLOCK,
) -> int:
    """Elements of memory that PyTorch's CPU ``convolution_backward`` (oneDNN through ideep) holds inside the op
    and releases before it returns. Not tensors: ``MemTracker`` does not see them, the process does.
    ``in_ch_hw`` / ``out_ch_hw``: (channels, H*W) of the conv's input and output.

    What they are (``aten/src/ATen/native/mkldnn/Conv.cpp`` ``mkldnn_convolution_backward`` and ideep's
    ``conv.hpp``; ``ONEDNN_VERBOSE``): with plain NCHW tensors oneDNN computes in blocked layouts (channels padded
    to ``block``), so backward-data and backward-weights reorder the output gradient and the input into blocked
    copies, and write their results blocked before copying them out. Sizes: ``X``, ``Y`` = the input and the
    output padded to the block (an input of 3 channels is read in place: oneDNN's first-layer kernels take a
    plain source), ``W`` = the weight. Backward: ``X + Y`` without an input gradient (the first layer); with one,
    ``X + 2 Y`` for a strided conv (oneDNN's strided backward-data kernel writes NHWC, copied once more) and
    ``max(X + Y, W)`` otherwise.

    Basis: a measurement, not a formula of oneDNN's: ``benchmarks/diagnostics/torch_conv_scratch.py`` (the RSS
    high-water mark reset around every ATen op) on the 30 conv layers of cnn3 (b8), AlexNet (b8), NiN (b2), VGG-11
    (b1) and LeNet (b32), torch 2.13 CPU, AVX2, 2 threads (``tests/data/torch_conv_scratch_avx2.json``): within 8%
    of the measured scratch for 22 of the 23 ops above 2 MB, +20% for NiN's nin2_1x1b (2.8 vs 2.3 MB); below 2 MB
    it over-counts by at most 0.5 MB (NiN's 1x1 convs, LeNet). The forward pass has a rule of its own
    (:func:`torch_onednn_conv_forward_scratch_elems`). oneDNN picks its kernels and layouts per CPU and shape, so
    other CPUs (AVX-512: block 16) need their own measurement.
    """
    cin, hw = in_ch_hw
    cout, out_hw = out_ch_hw

    x = 0 if cin == 3 else batch * ceil_to(cin, block) * hw
    y = batch * ceil_to(cout, block) * out_hw
    if not grad_input:
        return x + y
    if stride[0] > 1 or stride[1] > 1:
        return x + 2 * y
    return max(x + y, cout * cin * kernel[0] * kernel[1])


def torch_onednn_conv_forward_scratch_elems(
    batch: int,
    in_ch_hw: tuple[int, int],
    out_ch_hw: tuple[int, int],
    kernel: tuple[int, int],
    block: int = ONEDNN_AVX2_BLOCK,
) -> int:
    """Elements that PyTorch's CPU ``convolution`` forward (oneDNN) holds while it runs and releases before it
    returns, beside its output: ``max(Y, X + W)``, ``Y`` the output in oneDNN's blocked layout (written there,
    then reordered into the returned NCHW tensor), ``X`` the input's blocked copy, ``W`` the weight's; ``Y`` only
    when the conv has at least ``block`` output channels and ``X`` only with at least ``block`` input channels
    (with fewer, oneDNN's kernels read or write the plain layout).

    Basis: a measurement (``benchmarks/diagnostics/torch_conv_scratch.py``, the forward convs of cnn3, AlexNet, NiN,
    VGG-11 and LeNet, same machine as :func:`torch_onednn_conv_scratch_elems`,
    ``tests/data/torch_conv_scratch_avx2.json``): within 10% for the 21 ops above 2 MB but NiN's first 1x1 conv
    (+10.9%, 2.28 vs 2.05 MB); below 2 MB it over-counts by at most 0.4 MB (NiN's 1x1 convs, LeNet's conv2).
    """
    cin, hw = in_ch_hw
    cout, out_hw = out_ch_hw

    y = batch * ceil_to(cout, block) * out_hw if cout >= block else 0
    x = batch * ceil_to(cin, block) * hw if cin >= block else 0
    return max(y, x + cout * cin * kernel[0] * kernel[1])


#: Minimum block of PyTorch's CUDA caching allocator (``c10/cuda/CUDACachingAllocator.cpp`` kMinBlockSize);
#: MemTracker rounds every CUDA storage up to it. CPU storages are counted exactly.
TORCH_CUDA_ROUND_BYTES = 512


def _good_ld(dim: int, elem_bytes: int = 4) -> int:
    """oneDNN ``rnn_utils::get_good_ld``: round up to 64 bytes, and step past multiples of 256 elements."""
    per = 64 // elem_bytes
    ld = -(-dim // per) * per
    return ld + per if ld % 256 == 0 else ld


#: TensorFlow's CPU convolution-gradient kernels (``conv_grad_input_ops.h`` Conv2DCustomBackpropInputOp,
#: ``conv_grad_filter_ops.cc`` Conv2DCustomBackpropFilterOp) size their im2col buffer for this working set
#: (``target_working_set_size = l3_cache_size / sizeof(T)``, l3 = 30 MiB) and the parallel-contraction test for
#: this one (``l2_cache_size / sizeof(T)``, l2 = 256 KiB), in elements.
TF_CONV_GRAD_TARGET_ELEMS = (30 << 20) // 4
TF_CONV_GRAD_L2_ELEMS = (256 << 10) // 4


def tf_conv_grad_col_shards(batch: int, out_hw: int, kernel_elems: int, cout: int, threads: int) -> tuple[int, int]:
    """Images per im2col buffer (``shard_size``) of TensorFlow's CPU conv-gradient ops:
    ``(Conv2DBackpropInput's, Conv2DBackpropFilter's)``; ``out_hw`` = OH*OW, ``kernel_elems`` = kh*kw*Cin,
    ``threads`` = the intra-op pool's size (TensorFlow's default: the core count). The buffer of one call is
    ``shard_size * out_hw * kernel_elems`` elements.

    Basis (TensorFlow 2.21, the kernels registered for float on CPU when oneDNN's ops are off, the default on
    CPUs without AVX512_VNNI/AMX; ``conv_grad_input_ops.h`` Conv2DCustomBackpropInputOp, ``conv_grad_filter_ops.cc``
    Conv2DCustomBackpropFilterOp): both ops ``allocate_temp`` a ``col_buffer`` of ``[shard_size, OH*OW,
    kh*kw*Cin]`` for the call. Input op: ``work_unit = OH*OW*Cout + kh*kw*Cin*Cout + OH*OW*kh*kw*Cin``;
    ``use_parallel_contraction = N == 1 or work_unit / threads >= l2 / 4`` (then ``shard_size = 1``), else
    ``shard_size = ceil(target / work_unit)``. Filter op: ``shard_size = ceil(target / (OH*OW*kh*kw*Cin +
    OH*OW*Cout + kh*kw*Cin*Cout))``, with no batch term. Checked against TensorFlow 2.21's own allocation
    records (FULL_TRACE step stats) for 8 shapes, to the byte (``tests/test_timeline.py``).
    """
    per_image = out_hw * kernel_elems
    work_in = out_hw * cout + kernel_elems * cout + per_image
    if batch == 1 or work_in / max(threads, 1) >= TF_CONV_GRAD_L2_ELEMS:
        shard_in = 1
    else:
        shard_in = math.ceil(TF_CONV_GRAD_TARGET_ELEMS / work_in)
    shard_filter = math.ceil(TF_CONV_GRAD_TARGET_ELEMS / (per_image + out_hw * cout + kernel_elems * cout))
    return shard_in, shard_filter


def tf_conv_grad_col_elems(batch: int, out_hw: int, kernel_elems: int, cout: int, threads: int) -> tuple[int, int]:
    """Elements of the im2col buffers (:func:`tf_conv_grad_col_shards`) that one call of each op writes:
    ``min(shard_size, N)`` images (the batch loops in groups of ``shard_size``; the parallel path reuses one
    slice). The rest of the buffer is allocated but never written, and a process's memory counts written pages,
    so the simulated step holds the written part. Measured with ``benchmarks/diagnostics/tf_step_memory.py --gap
    D`` (cnn3, NiN, batches 1-8): the step's pages grow with the batch up to the shard, then stay; with
    ``MALLOC_PERTURB_``, which writes every allocated byte, the step rises to the whole allocation.
    """
    shard_in, shard_filter = tf_conv_grad_col_shards(batch, out_hw, kernel_elems, cout, threads)
    per_image = out_hw * kernel_elems
    return min(shard_in, batch) * per_image, min(shard_filter, batch) * per_image


def lstm_workspace_bytes(batch: int, steps: int, features: int, units: int, elem_bytes: int = 4) -> int:
    """Bytes of the oneDNN workspace that ``mkldnn_rnn_layer`` returns for one single-layer, one-direction LSTM.

    Basis: oneDNN ``src/cpu/rnn/rnn_utils.hpp set_workspace_sizes`` and ``rnn_utils.cpp set_offsets``: the
    workspace holds, each part rounded up to a 4096-byte page, the gates of every step
    ``T * B * good_ld(4H)``, the hidden outputs ``T * B * good_ld(H)``, the layer states
    ``2 * (T + 1) * B * good_ld(max(F, H))``, the cell states ``2 * (T + 1) * B * H``, and in training the
    state gradients (two of the first kind, one of the second). Checked against the workspace tensor
    torch 2.13 CPU returns (MemTracker) for 20 shapes, e.g. (B, T, F, H) = (8, 40, 60, 128): 2,519,040 bytes.
    """
    page = 4096

    def pages(n_bytes: int) -> int:
        return -(-n_bytes // page) * page

    b, t, f, h = batch, steps, features, units
    wide = _good_ld(max(f, h), elem_bytes)
    states = 2 * (t + 1) * b * wide * elem_bytes
    cells = 2 * (t + 1) * b * h * elem_bytes
    parts = (
        t * b * _good_ld(4 * h, elem_bytes) * elem_bytes,  # ws_gates
        t * b * _good_ld(h, elem_bytes) * elem_bytes,  # ws_ht
        states,  # ws_states_layer (= ws_states_iter)
        cells,  # ws_states_iter_c
        states,  # ws_diff_states_layer
        states,  # ws_diff_states_iter
        cells,  # ws_diff_states_iter_c
    )
    return sum(pages(p) for p in parts)


# ------------------------------------------------------------------------------ TensorFlow (partly measured)

#: Per layer op: which tensors its gradient function reads (kept alive by the tape until backward), whether the
#: activation is a separate op whose gradient reads its output. The bias add and the element-wise activations
#: write into their input's buffer (``view``): TensorFlow's kernels forward an input whose only reader they are
#: (``OpKernelContext::forward_input_or_allocate_output``), and no gradient reads a conv/dense output or a bias
#: add's. Measured (``benchmarks/diagnostics/tf_step_memory.py --gap C``, TensorFlow 2.21 CPU, grappler
#: remapping off so that BiasAdd and Relu stay separate nodes): AlexNet's 8 BiasAdd and 7 Relu nodes allocate
#: nothing, and the inference tensor peak equals one layer's input + output within 0.25 MB (AlexNet b8, VGG-11,
#: VGG-16 b1, cnn3 b8). Also measured (same script): a layer's input is freed once its explicit Pad has run
#: (gap C, VGG-16); the conv-gradient ops' im2col buffers (:func:`tf_conv_grad_col_elems`, gap D); each weight
#: gradient is freed once its update has run, which the simulator places at the next layer's gradients (gap E,
#: VGG-11 batch 1: the simulated tensor peak, 526.6 MB above the baseline, against 526.5 MB in the allocator's
#: records); the two conv-gradient ops of a layer run at once, both im2col buffers live (gaps D and F, NiN and
#: LeNet); ReluGrad writes into the gradient it receives (memray's records of cnn3 training). Measured and NOT
#: modelled: SGD's ``AssignSubVariableOp`` copies a variable whose buffer a running op
#: still reads (``PrepareToUpdateVariable``): AlexNet b8 and VGG-11 b2 copied fc6 (and fc7), VGG-11 b1 did not, so
#: whether it happens depends on the executor's order. The rest is NOT MEASURED.
TF_OPS: dict[str, OpRule] = {
    "Conv2D": OpRule(
        _OUT,
        ("input",),
        (
            Buf("grad:input", "input"),
            Buf("workspace", "col_input"),
            Buf("param:weight", "weight"),
            Buf("workspace", "col_filter"),
            FREE_TEMPS,
        ),
        "tensorflow/python/ops/nn_grad.py _Conv2DGrad: op.inputs[0], [1]; Conv2DBackpropInput and "
        "Conv2DBackpropFilter, each with its im2col buffer for the call (tf_conv_grad_col_elems), run at once: "
        "measured (tf_step_memory.py --gap D and F, the allocator's records): both buffers are live together at "
        "the peak of NiN batch 2 (nin4_conv) and LeNet batch 32 (conv2)",
    ),
    "BiasAdd": OpRule(
        (), (), (), "nn_grad.py _BiasAddGrad: reads only the gradient; in place (measured)", view=True, passthrough=True
    ),
    "Relu": OpRule(
        (),
        ("output",),
        (),
        "nn_grad.py _ReluGrad: relu_grad(grad, op.outputs[0]); forward in place (measured); the backward too: "
        "ReluGrad is a BinaryElementWiseOp (core/kernels/relu_op.h, numeric_op.h), which writes into its incoming "
        "gradient's buffer (forward_input_or_allocate_output({0, 1}, ...)) when the ReluGrad is that gradient's "
        "only reader, as it is here. Measured (native_step_memory.py's memray records, cnn3 batch 8 training): no "
        "allocation of 1 MB or more in any ReluGrad, where a new gradient of conv1's output would be 48 MB",
        view=True,
    ),
    "Sigmoid": OpRule(
        (),
        ("output",),
        _GRAD_IN,
        "math_grad.py _SigmoidGrad: op.outputs[0]; in place as Relu (not measured)",
        view=True,
    ),
    "Tanh": OpRule(
        (), ("output",), _GRAD_IN, "math_grad.py _TanhGrad: op.outputs[0]; in place as Relu (not measured)", view=True
    ),
    "Softmax": OpRule(_OUT, ("output",), _GRAD_IN, "nn_grad.py _SoftmaxGrad: op.outputs[0]"),
    "MatMul": OpRule(_OUT, ("input",), _GRAD_IN_W, "math_grad.py _MatMulGrad: op.inputs[0], [1]"),
    "MaxPool": OpRule(_OUT, ("input", "output"), _GRAD_IN, "nn_grad.py _MaxPoolGrad: op.inputs[0], op.outputs[0]"),
    "AvgPool": OpRule(_OUT, (), _GRAD_IN, "nn_grad.py _AvgPoolGrad: only the input's shape"),
    "Mean": OpRule(_OUT, (), _GRAD_IN, "math_grad.py _MeanGrad: only shapes"),
    "Pad": OpRule(
        _OUT,
        (),
        _GRAD_IN,
        "array_grad.py _PadGrad: a slice of the gradient (the input's size). The executor frees a tensor after its "
        "last consumer, and the Pad is the only consumer of the layer's input: the simulator drops it right after "
        "the Pad (measured: benchmarks/diagnostics/tf_step_memory.py --gap C, VGG-16 inference, the step's tensor "
        "peak is conv1_2's Pad output + its output)",
    ),
    "Dropout": OpRule(
        (Buf("aux:mask", "output", "bool"), Buf("output", "output")),
        ("aux:mask",),
        _GRAD_IN,
        "tensorflow/python/ops/nn_ops.py dropout: x * scale, then where(keep_mask, ., 0): the bool mask is kept",
    ),
    "view": OpRule((), (), (), "array_grad.py _ReshapeGrad: a reshape of the gradient", view=True),
    "LRN": OpRule(_OUT, ("input", "output"), _GRAD_IN, "nn_grad.py _LRNGrad: op.inputs[0], op.outputs[0]"),
    "Embedding": OpRule(
        _OUT,
        (),
        (Buf("param:weight", "weight"),),
        "embedding_lookup (Gather): array_grad.py _GatherGrad gives IndexedSlices; counted here as a dense "
        "gradient of the table",
    ),
    "LSTM": OpRule(
        (Buf("output", "output"), Buf("aux:gates", "gates")),
        ("input", "output", "aux:gates"),
        _GRAD_IN_W,
        "keras LSTM unrolled in a While loop: per step the gates (4H) and states are kept for backward",
    ),
    # The transformer's ops: first approximation (read from the gradient functions, not measured)
    "BatchMatMulV2": OpRule(
        _OUT,
        ("input", "other"),
        (Buf("grad:input", "input"), Buf("grad:other", "other")),
        "math_grad.py _BatchMatMulV2: op.inputs[0] and [1] kept for the two gradients; first approximation",
    ),
    "Transpose": OpRule(
        _OUT, (), _GRAD_IN, "array_grad.py _TransposeGrad: a transpose of the gradient (a copy); first approximation"
    ),
    "MulScale": OpRule(
        _OUT,
        (),
        _GRAD_IN,
        "math_grad.py _MulGrad: grad * y for a constant y (the 1/sqrt(K) scale); first approximation",
    ),
    # tf.nn.gelu is composed in Python (nn_ops.py gelu): erf form 0.5 * x * (1 + erf(x / sqrt 2)); the gradients
    # of Mul and Erf keep x / sqrt 2, 0.5 x and 1 + erf(.) beside x (three tensors of the input's size); the tanh
    # form keeps x^3 (Pow), the inner sum, its scaled value, tanh's output, 0.5 x and 1 + tanh (six)
    "Gelu": OpRule(
        (Buf("aux:scaled", "input"), Buf("aux:half", "input"), Buf("aux:one_plus_erf", "input"), *_OUT),
        ("input", "aux:scaled", "aux:half", "aux:one_plus_erf"),
        (Buf("temp", "input"), Buf("temp", "input"), Buf("grad:input", "input")),
        "nn_ops.py gelu (approximate=False) composed of Mul, Erf, AddV2; math_grad.py _ErfGrad and _MulGrad keep "
        "their inputs; first approximation",
    ),
    "GeluTanh": OpRule(
        (
            Buf("aux:cube", "input"),
            Buf("aux:inner", "input"),
            Buf("aux:scaled", "input"),
            Buf("aux:tanh", "input"),
            Buf("aux:half", "input"),
            Buf("aux:one_plus_tanh", "input"),
            *_OUT,
        ),
        ("input", "aux:cube", "aux:inner", "aux:scaled", "aux:tanh", "aux:half", "aux:one_plus_tanh"),
        (Buf("temp", "input"), Buf("temp", "input"), Buf("temp", "input"), Buf("grad:input", "input")),
        "nn_ops.py gelu (approximate=True) composed of Pow, Mul, AddV2, Tanh; math_grad.py _TanhGrad keeps the "
        "output, _MulGrad its inputs; first approximation",
    ),
}

# ------------------------------------------------------------------------------ MXNet (first approximation)

#: MXNet keeps what each operator's FGradient reads; its planner (src/nnvm/plan_memory.cc) runs the
#: element-wise Activation in place on the convolution/dense output (``FInplaceOption``) and reuses freed
#: buffers, so a simulated free is a real free. NOT MEASURED.
MXNET_OPS: dict[str, OpRule] = {
    "Pad": OpRule(_OUT, (), _GRAD_IN, "src/operator/pad.cc: the backward slices the gradient (the input's size)"),
    "Convolution": OpRule(
        _OUT, ("input",), _GRAD_IN_W, "src/operator/nn/convolution.cc ConvolutionGrad: in_data (input, weight)"
    ),
    "FullyConnected": OpRule(
        _OUT, ("input",), _GRAD_IN_W, "src/operator/nn/fully_connected.cc FullyConnectedGrad: in_data (input, weight)"
    ),
    "Activation": OpRule(
        (),
        ("output",),
        _GRAD_IN,
        "src/operator/nn/activation.cc: backward reads out_data; in place on its input (FInplaceOption)",
        view=True,
    ),
    "softmax": OpRule(_OUT, ("output",), _GRAD_IN, "src/operator/nn/softmax.cc: backward reads the output"),
    "Pooling": OpRule(
        _OUT, ("input", "output"), _GRAD_IN, "src/operator/nn/pooling.cc: backward reads in_data and out_data"
    ),
    "Dropout": OpRule(
        (Buf("aux:mask", "output"), Buf("output", "output")),
        ("aux:mask",),
        _GRAD_IN,
        "src/operator/nn/dropout.cc: a float mask output kept for backward",
    ),
    "view": OpRule((), (), (), "src/operator/tensor/matrix_op.cc Flatten: identity storage", view=True),
    "LRN": OpRule(
        (Buf("output", "output"), Buf("aux:tmp_norm", "output")),
        ("input", "output", "aux:tmp_norm"),
        _GRAD_IN,
        "src/operator/nn/lrn.cc: outputs out and tmp_norm; the backward reads in_data, out_data and tmp_norm",
    ),
    "Embedding": OpRule(
        _OUT,
        (),
        (Buf("param:weight", "weight"),),
        "src/operator/tensor/indexing_op.cc Embedding: a dense (vocab, dim) weight gradient",
    ),
    "RNN": OpRule(
        (Buf("output", "output"), Buf("aux:workspace", "gates")),
        ("input", "output", "aux:workspace"),
        _GRAD_IN_W,
        "src/operator/rnn.cc: the reserve space (gates and states of every step) is kept for backward",
    ),
    # The transformer's ops (first approximation, not measured)
    "batch_dot": OpRule(
        _OUT,
        ("input", "other"),
        (Buf("grad:input", "input"), Buf("grad:other", "other")),
        "src/operator/tensor/dot.cc batch_dot: _backward_batch_dot reads both inputs; first approximation",
    ),
    "transpose": OpRule(
        _OUT, (), _GRAD_IN, "src/operator/tensor/matrix_op.cc transpose: the gradient transposed back (a copy)"
    ),
    "_mul_scalar": OpRule(
        _OUT, (), _GRAD_IN, "src/operator/tensor/elemwise_binary_scalar_op_basic.cc _mul_scalar: grad * scalar"
    ),
    "LeakyReLU_gelu": OpRule(
        _OUT,
        ("input", "output"),
        _GRAD_IN,
        "src/operator/leaky_relu.cc LeakyReLU act_type=gelu (the erf form): the backward reads in_data and "
        "out_data; first approximation",
    ),
    # gelu_tanh composed in the block from tanh, products and sums: like TensorFlow's, the products keep their
    # operands (x^3, the inner sum, tanh's output, 0.5 x, 1 + tanh)
    "gelu_tanh": OpRule(
        (
            Buf("aux:cube", "input"),
            Buf("aux:inner", "input"),
            Buf("aux:tanh", "input"),
            Buf("aux:half", "input"),
            Buf("aux:one_plus_tanh", "input"),
            *_OUT,
        ),
        ("input", "aux:cube", "aux:inner", "aux:tanh", "aux:half", "aux:one_plus_tanh"),
        (Buf("temp", "input"), Buf("temp", "input"), Buf("grad:input", "input")),
        "src/operator/tensor/elemwise_binary_op_basic.cc _backward_mul reads both operands, "
        "src/operator/tensor/elemwise_unary_op_trig.cc _backward_tanh the output; first approximation",
    ),
}


def element_bytes(dtype: str, width: int) -> int:
    """Bytes per element of a rule's element type, where ``x`` is the model's dtype of ``width`` bytes."""
    return width if dtype == "x" else ELEMENT_BYTES[dtype]


def ceil_to(n_bytes: int, block: int) -> int:
    return math.ceil(n_bytes / block) * block if block > 1 else n_bytes


# ------------------------------------------------------------------ process-level rules that read the run's CPU

#: oneDNN's float32 channel block per CPU instruction set (its blocked activation layouts ``nChw16c`` on AVX-512,
#: ``nChw8c`` on AVX2/AVX/SSE4.1; oneDNN's ``cpu_isa_t`` and the layouts its jit convolutions pick). The run reads
#: the ISA (``ONEDNN_MAX_CPU_ISA`` / ``DNNL_MAX_CPU_ISA`` and the CPU's flags: ``benchmarks/harness/rows.py``
#: ``onednn_isa``); the prediction takes the block as an input.
ONEDNN_BLOCK_BY_ISA: dict[str, int] = {"avx512": 16, "avx2": 8, "avx": 8, "sse41": 8}


def onednn_channel_block(isa: str) -> int:
    """The float32 channel block oneDNN's blocked layouts use on ``isa`` (``avx512*`` -> 16, else 8)."""
    key = isa.strip().lower()
    if key.startswith("avx512") or key.startswith("avx10") or key.startswith("amx"):
        return ONEDNN_BLOCK_BY_ISA["avx512"]
    return ONEDNN_BLOCK_BY_ISA.get(key, ONEDNN_AVX2_BLOCK)


#: MXNet's static memory planner (``src/imperative/imperative_utils.h`` MXPlanMemory, the GraphAllocator of
#: ``src/nnvm/plan_memory.cc``): a freed buffer is reused by a later request whose size is within this factor
#: (``NNVM_EXEC_MATCH_RANGE``, default 16), the smallest free buffer at least as large first, else the largest
#: smaller one, which then grows to the request.
MXNET_PLAN_MATCH_RANGE = 16


def mxnet_plan_bytes(requests: list[tuple[str, str, int]], match_range: int = MXNET_PLAN_MATCH_RANGE) -> int:
    """Bytes of the storage MXNet's static memory plan allocates for a step's sequence of ``requests``:
    ``("alloc", name, nbytes)`` / ``("free", name, 0)`` in execution order. A ``hybridize(static_alloc=True)`` graph
    allocates every planned buffer once and keeps it (``CachedOp::StaticAllocMemory``), so the step's arrays take
    the plan's total, not the live peak: the total of each storage entry's largest request.

    Basis: the GraphAllocator's ``Request``/``Release`` (``src/nnvm/plan_memory.cc``): a free list keyed by size;
    a request of ``s`` bytes takes, among the free entries of size in ``[s // m, s * m]``, the smallest of size
    ``>= s``, else the largest smaller one (whose size grows to ``s``); none: a new entry."""
    free: list[tuple[int, int]] = []  # (size, entry id), in release order
    sizes: list[int] = []
    entry_of: dict[str, int] = {}
    for action, name, nbytes in requests:
        if action == "free":
            if name in entry_of:
                sid = entry_of.pop(name)
                free.append((sizes[sid], sid))
            continue
        lo, hi = nbytes // match_range, nbytes * match_range
        larger = [f for f in free if nbytes <= f[0] <= hi]
        smaller = [f for f in free if lo <= f[0] < nbytes]
        pick = min(larger, key=lambda f: f[0]) if larger else max(smaller, key=lambda f: f[0]) if smaller else None
        if pick is None:
            sizes.append(nbytes)
            entry_of[name] = len(sizes) - 1
            continue
        free.remove(pick)
        sid = pick[1]
        sizes[sid] = max(sizes[sid], nbytes)
        entry_of[name] = sid
    return sum(sizes)


#: Copies, per convolution, of a conv input in oneDNN's blocked layout that an MXNet training step holds beyond
#: its static plan (fitted, see :func:`mxnet_onednn_layout_elems`).
MXNET_TRAIN_INPUT_COPIES = 1.5


def mxnet_onednn_layout_elems(
    batch: int,
    in_ch_hw: tuple[int, int],
    out_channels: int,
    kernel: tuple[int, int],
    training: bool,
    block: int,
) -> int:
    """Elements one MXNet convolution (oneDNN, MXNet 1.9.1 CPU) holds in oneDNN's blocked layouts beyond the
    arrays of MXNet's static memory plan (:func:`mxnet_plan_bytes`), with channels padded to ``block``
    (:func:`onednn_channel_block`; an input of 4 channels or fewer is read plain, as oneDNN's first-layer
    kernels do): the weight's blocked copy ``W`` (``Wb``: output channels padded; input channels too above 4),
    and in training :data:`MXNET_TRAIN_INPUT_COPIES` blocked copies of the conv's input ``X``.

    Basis, measured (``DNNL_VERBOSE=1 .tox/mxnet/bin/python -m xfbench.benchmarks.harness.worker --backend mxnet
    --model M --phase P --batch B --repeats 1 --no-tensor``, oneDNN 2.4.4 inside MXNet 1.9.1, this AVX-512 CPU):
    every conv weight is reordered from ``abcd`` into a blocked format in each forward, and after an inference
    forward reordered once more and kept (``MKLDNNDataReorderAsync``: cnn3, ResNet-18, held-out oddconv); the
    activations pass between oneDNN ops in blocked layouts (``aBcd8b``/``aBcd16b``); memray's owners of the first
    step (README, "What the first step holds") are MXNet's temp space and these layout copies. The kernel, and with
    it the block, is chosen per shape: ResNet-18's convs (channels multiples of 16) run ``brgconv:avx512_core``,
    the held-out spec's 24/40/72-channel convs ``jit:avx2`` with 8-blocks, cnn3's first two convs (3 and 100 input
    channels) ``gemm:jit`` on plain layouts; the ISA's block is the approximation used here.

    The sizes are a FIT, not a derivation: over the 7 catalog conv rows in training at the default ISA
    (AVX-512), the step minus the plan, the measured framework overhead and ``sum(Wb)`` is matched by
    ``1.61 sum(Xb)`` (least squares in relative error), used rounded to 1.5; inference is ``sum(Wb)``. Checked on
    rows no coefficient was fitted to (the custom specs at batches 8 and 32, two of them new and held out, and all
    rows again under ``ONEDNN_MAX_CPU_ISA=AVX2``; issue 20 item 4). Which arrays MXNet keeps
    blocked and which its temp space reuses (``TmpMemMgr``: twice the largest request of the operators before
    it) is not itemized per array (not yet isolated: memray's per-allocation owners at two batches would).
    """
    cin, hw = in_ch_hw
    kh, kw = kernel
    plain_in = cin <= 4
    weight = ceil_to(out_channels, block) * (cin if plain_in else ceil_to(cin, block)) * kh * kw
    if not training:
        return weight
    x = batch * (cin if plain_in else ceil_to(cin, block)) * hw
    return weight + math.ceil(MXNET_TRAIN_INPUT_COPIES * x)


#: TensorFlow's convolution with its oneDNN ops on (``_MklConv2D``/``_MklFusedConv2D`` and the oneDNN gradient ops;
#: on by default on CPUs with AVX512_VNNI/AVX512_BF16/AMX, or with ``TF_ENABLE_ONEDNN_OPTS=1``): no im2col buffers
#: (those are Eigen's kernels, :func:`tf_conv_grad_col_elems`); the gradient ops hold blocked copies of the input
#: and of the output gradient while they run (the mechanism of :func:`torch_onednn_conv_scratch_elems`, unpadded
#: here: the sizes of ``input`` and ``output``); the forward writes NHWC directly (oneDNN's native ``acdb``
#: kernels: a blocked-destination copy in the forward over-predicted every inference row). Selected by
#: ``simulate(tf_onednn=True)``; the benchmark rows read the switch from the run (``benchmarks/harness/rows.py``
#: ``tf_onednn_enabled``).
#:
#: Basis, measured on the 2-core AVX-512 (AVX512_VNNI) CPU, TensorFlow 2.21 (issue 20 item 4): the quick-profile
#: catalog with ``TF_ENABLE_ONEDNN_OPTS=0`` measures what the Eigen rules were fitted to (AlexNet training 258.2 MB
#: against 255 on the AVX2 reference machine; cnn3, AlexNet and VGG-11 inference within 3% of the Eigen-rule
#: prediction) and, with TensorFlow's default (oneDNN on), AlexNet training 137 MB: the switch, not the ISA cap
#: (``ONEDNN_MAX_CPU_ISA=AVX2`` moved no TensorFlow catalog row by more than its spread), is what changed. On the
#: custom specs at batches 8 and 32 (training), this rule's per-sample slope is -8% to +7% of the measured one for
#: the five conv specs with an input gradient (AVX2 cap: -11% to +18%), where the Eigen rule's was -46% to +179%
#: (tiny's one conv has no input gradient: -1% / -22% either way; textnet has no conv). Not modelled (not yet
#: isolated): why the oneDNN-on step of AlexNet and VGG-11 holds less than their simulated tensors (inference
#: 10.8 MB against 11.0 simulated plus the probe's 5.7; training 137 against 206 plus 9.2).
TF_ONEDNN_OPS: dict[str, OpRule] = {
    "Conv2D": OpRule(
        _OUT,
        ("input",),
        (
            Buf("grad:input", "input"),
            Buf("workspace", "input"),
            Buf("param:weight", "weight"),
            Buf("workspace", "output"),
            FREE_TEMPS,
        ),
        "tensorflow/core/kernels/mkl/mkl_conv_ops.cc, mkl_conv_grad_input_ops.cc, mkl_conv_grad_filter_ops.cc "
        "(TensorFlow's oneDNN ops): the gradient ops reorder the input and the output gradient into blocked copies; "
        "no im2col buffer; measured per-sample slopes on the custom specs (TF_ONEDNN_OPS' comment)",
    ),
}
