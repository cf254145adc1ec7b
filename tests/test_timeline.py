"""The simulated step (analytics/timeline.py) against timelines computed by hand.

Every expected byte count below is written out from the layer sizes (float32: 4 bytes, int64 labels: 8);
none is read back from the simulator. The PyTorch rules themselves are checked against MemTracker in
tests/test_timeline_memtracker.py.
"""

from __future__ import annotations

import re

import pytest
from conftest import require_or_skip
from xfbench.analytics.catalog import catalog_model
from xfbench.analytics.spec import LSTM, Conv2D, Dense, Flatten, ModelSpec
from xfbench.analytics.timeline import CATEGORIES, simulate
from xfbench.analytics.timeline_rules import TF_OPS, TORCH_OPS, lstm_workspace_bytes

# A single Dense 4 -> 3 whose logits go to softmax cross-entropy, batch 2:
#   W 4x3 = 48 B, b 3 = 12 B, x 2x4 = 32 B, labels 2 int64 = 16 B, logits 2x3 = 24 B.
DENSE = ModelSpec("dense", (4,), (Dense(3),))
# Conv2D(2 filters, 3x3, valid, relu) on 1x4x4 -> 2x2x2, Flatten -> 8, Dense 8 -> 3, batch 2:
#   conv W 2*1*3*3 = 72 B, conv b 8 B, dense W 8*3 = 96 B, dense b 12 B (parameters 188 B);
#   x 2*16 floats = 128 B, labels 16 B; conv output 2*2*2*2 floats = 64 B; logits 24 B.
CONV = ModelSpec("conv", (1, 4, 4), (Conv2D(2, 3, activation="relu"), Flatten(), Dense(3)))


def _after_setup(tl):  # type: ignore[no-untyped-def]
    return [(e.action, e.nbytes) for e in tl.events if e.stage != "setup" and not e.op.startswith("zero_grad")]


def test_dense_training_step_event_by_event() -> None:
    tl = simulate(DENSE, 2, "training", "float32", "sgd", "torch")
    setup = sorted(e.nbytes for e in tl.events if e.stage == "setup")
    # x, W, b, labels, and the previous step's gradients of W and b (freed by zero_grad(set_to_none=True))
    assert setup == sorted([32, 48, 12, 16, 48, 12])
    assert [e.nbytes for e in tl.events if e.op.startswith("zero_grad")] == [48, 12]
    assert _after_setup(tl) == [
        ("alloc", 24),  # addmm: logits 2x3
        ("alloc", 24),  # _log_softmax result (kept for its backward)
        ("alloc", 4),  # nll_loss_forward: the loss
        ("alloc", 4),  # nll_loss_forward: total_weight (kept)
        ("free", 24),  # the logits: nobody saved them (addmm keeps its input, log_softmax its result)
        ("alloc", 4),  # backward seed (ones_like)
        ("alloc", 24),  # nll_loss_backward: gradient of the log-probabilities
        ("free", 4),  # total_weight released
        ("alloc", 24),  # _log_softmax_backward_data: gradient of the logits
        ("free", 24),  # the incoming gradient
        ("free", 24),  # the log-softmax result released
        ("alloc", 48),  # grad W (no grad of x: the input needs none)
        ("alloc", 12),  # grad b
        ("free", 24),  # the incoming gradient
        ("free", 4),  # the seed, when the backward ends
    ]
    # live bytes: 108 after zero_grad (W, b, x, labels), then +24 +24 +4 +4 -24 +4 +24 -4 +24 -24 -24 +48 +12
    assert tl.peak_bytes == 108 + 24 + 24 + 4 + 4 - 24 + 4 + 24 - 4 + 24 - 24 - 24 + 48 + 12 == 200
    assert tl.peak_event.stage == "backward" and tl.peak_event.nbytes == 12
    b = dict(tl.breakdown)
    assert b["parameters"] == 60 and b["gradients"] == 60 and b["input_batch"] == 48
    assert b["activations"] == 4  # the loss value
    assert b["temporaries"] == 4 + 24  # seed + the logits' gradient
    assert b["saved_activations"] == 0 and b["optimizer_state"] == 0 and b["workspace"] == 0


def test_dense_inference_by_hand() -> None:
    tl = simulate(DENSE, 2, "inference")
    assert tl.peak_bytes == 60 + 32 + 24  # parameters + x + logits
    assert [e.nbytes for e in tl.events if e.stage == "forward"] == [24]


def test_conv_relu_flatten_dense_training_by_hand() -> None:
    tl = simulate(CONV, 2, "training")
    # after zero_grad: params 188 + x 128 + labels 16 = 332
    # forward: conv 64, relu 64, conv output freed (-64), logits 24
    # loss: log_softmax 24, loss 4, total_weight 4, logits freed (-24)
    # backward: seed 4; nll grad 24, total_weight -4; log_softmax grad 24, -24 incoming, -24 result;
    #   addmm: grad of the flattened relu output 64, grad W 96, grad b 12, -24 incoming;
    #   view: the gradient passes through; relu: grad 64 <- the peak
    live = 332 + 64 + 64 - 64 + 24 + 24 + 4 + 4 - 24 + 4 + 24 - 4 + 24 - 24 - 24 + 64 + 96 + 12 - 24 + 64
    assert live == 640
    assert tl.peak_bytes == 640
    assert tl.peak_event.op.endswith("relu") and tl.peak_event.stage == "backward"
    b = dict(tl.breakdown)
    assert b["parameters"] == 188
    assert b["gradients"] == 96 + 12  # the dense layer's; the conv's come after the peak
    assert b["input_batch"] == 128 + 16
    assert b["saved_activations"] == 64  # the relu output, kept by threshold_backward
    assert b["activations"] == 4  # the loss
    assert b["temporaries"] == 4 + 64 + 64  # seed, gradient into relu, relu's input gradient
    # the conv's input gradient is never made (x needs none): the largest backward alloc is grad W of the dense
    assert max(e.nbytes for e in tl.events if e.stage == "backward" and "conv" in e.op.lower()) == 72


def test_conv_inference_by_hand() -> None:
    tl = simulate(CONV, 2, "inference")
    # params 188 + x 128; conv2d 64; relu 64 (the peak: the conv output is referenced until the layer returns);
    # the conv output is freed; the logits 24 while the relu output (the dense input) is alive; then it goes
    assert tl.peak_bytes == 188 + 128 + 64 + 64 == 444
    assert [(e.action, e.nbytes) for e in tl.events if e.stage == "forward"] == [
        ("alloc", 64),
        ("alloc", 64),
        ("free", 64),
        ("alloc", 24),
        ("free", 64),
    ]


@pytest.mark.parametrize(
    ("optimizer", "warm", "peak"),
    [
        # adam, steady state: + 2 slots (120 B) + two 0-d steps (8 B) all along; the update of W makes a sqrt
        # temporary and the denominator (48 + 48) on top of the 300 B left after the backward
        ("adam", True, 172 + 128 + 48 + 48),
        # adam, first step: the state (128 B) is created by the update, then the same loop
        ("adam", False, 172 + 128 + 48 + 48),
        # momentum, first step: each gradient cloned into its buffer after the backward (172 + 48 + 12)
        ("momentum", False, 232),
        # momentum, steady state: 60 B of buffers alive during the backward peak (200 + 60)
        ("momentum", True, 260),
        ("sgd", False, 200),
    ],
)
def test_optimizers_by_hand(optimizer: str, warm: bool, peak: int) -> None:
    assert simulate(DENSE, 2, "training", optimizer=optimizer, warm=warm).peak_bytes == peak


def test_gpu_rounds_every_tensor_to_512_bytes() -> None:
    # at the peak nine tensors are alive (W, b, x, labels, loss, total_weight, log-softmax result, seed,
    # nll gradient); each is under 512 B, so each counts one caching-allocator block
    assert simulate(DENSE, 2, "training", device="gpu").peak_bytes == 9 * 512


def test_lstm_workspace_matches_the_tensor_torch_returned() -> None:
    # measured: bytes of the workspace mkldnn_rnn_layer returned (torch 2.13 CPU, MemTracker), (B, T, F, H)
    measured = {
        (2, 3, 5, 4): 28_672,
        (2, 40, 60, 128): 643_072,
        (8, 40, 60, 128): 2_519_040,
        (4, 20, 64, 64): 335_872,
        (5, 20, 64, 64): 425_984,
        (8, 20, 64, 64): 647_168,
        (4, 21, 64, 64): 344_064,
        (4, 20, 65, 64): 372_736,
        (4, 20, 128, 64): 458_752,
        (4, 20, 64, 65): 380_928,
        (4, 20, 64, 128): 643_072,
    }
    for shape, n in measured.items():
        assert lstm_workspace_bytes(*shape) == n, shape
    # the catalog LSTM at batch 8, part by part (4096-byte pages): gates 40*8*528*4 = 675,840;
    # hidden 40*8*128*4 = 163,840; three state buffers and two cell buffers of 2*41*8*128*4 = 335,872
    assert 675_840 + 163_840 + 5 * 335_872 == 2_519_040


def test_padding_copies_follow_the_backend() -> None:
    cnn3 = catalog_model("cnn3")

    def pads(framework: str) -> list[int]:
        tl = simulate(cnn3, 1, "training", framework=framework)
        return [e.nbytes for e in tl.events if e.action == "alloc" and e.stage == "forward" and "pad" in e.op.lower()]

    # cnn3 (3x200x300, 3x3 stride-2 `same`): H and W pads of (0, 1) for conv1 and conv2; conv3 pads H (0, 1)
    # and W (1, 1), still asymmetric, so PyTorch and MXNet copy every input; Keras pads inside the op
    expected = [3 * 201 * 301 * 4, 100 * 101 * 151 * 4, 200 * 51 * 77 * 4]
    assert pads("torch") == expected
    assert pads("mxnet") == expected
    assert pads("tensorflow") == []
    # a symmetric `same` (3x3, stride 1) pads inside the convolution
    same = ModelSpec("same", (1, 5, 5), (Conv2D(2, 3, padding="same"), Flatten(), Dense(2)))
    assert not [e for e in simulate(same, 1, "training").events if "pad" in e.op.lower()]


def test_dispatch_mode_adds_the_out_of_place_bias_add() -> None:
    # LSTM(4, sequences) -> Dense(6) at batch 2: the dense input is a transposed (non-contiguous) buffer, so
    # linear runs matmul + add_; under a TorchDispatchMode the add is out of place: one more 2*3*6*4 = 144 B
    spec = ModelSpec("seq", (3, 5), (LSTM(4, return_sequences=True), Dense(6)))
    real = simulate(spec, 2, "training")
    observed = simulate(spec, 2, "training", dispatch_mode=True)
    extra = [e.nbytes for e in observed.events if e.action == "alloc"]
    base = [e.nbytes for e in real.events if e.action == "alloc"]
    assert len(extra) == len(base) + 1
    assert sum(extra) - sum(base) == 144


def test_curve_and_breakdown_are_consistent() -> None:
    tl = simulate(catalog_model("lenet"), 3, "training", optimizer="adam")
    assert max(tl.curve) == tl.peak_bytes == tl.curve[tl.peak_index]
    assert sum(v for _, v in tl.breakdown) == tl.peak_bytes
    assert tl.breakdown_at(tl.peak_index) == dict(tl.breakdown)
    assert [c for c, _ in tl.breakdown] == list(CATEGORIES)
    assert all(v >= 0 for _, v in tl.breakdown)
    # at the end: parameters, gradients, adam state, x and labels, the loss
    end = tl.breakdown_at(len(tl.events) - 1)
    assert end["temporaries"] == end["saved_activations"] == 0
    assert end["gradients"] == end["parameters"] and end["optimizer_state"] == 2 * end["parameters"] + 10 * 4
    assert tl.as_dict()["peak_bytes"] == tl.peak_bytes


def test_other_frameworks_are_flagged_as_approximations() -> None:
    mx = simulate(catalog_model("alexnet"), 2, "training", framework="mxnet")
    assert any("first approximation" in n for n in mx.notes)
    tf = simulate(catalog_model("alexnet"), 2, "training", framework="tensorflow")
    assert any("measured" in n and "the others" in n for n in tf.notes)
    assert not simulate(catalog_model("alexnet"), 2, "training").notes


# What a rule's basis cites: a derivatives.yaml entry (``tools/autograd/derivatives.yaml relu: ...``), an ATen op
# (``aten.linear``), a source file (``aten/src/ATen/native/Linear.cpp``), a TensorFlow gradient function
# (``nn_grad.py _ReluGrad``), or a MemTracker / allocation-record measurement.
_DY_ENTRY = re.compile(r"derivatives\.yaml ([\w./]+)")
_ATEN_OP = re.compile(r"\baten\.(\w+)")
_SOURCE_FILE = re.compile(r"\b[\w/]+\.(?:yaml|py|cpp|cc|h)\b")
_TF_GRAD = re.compile(r"\b(nn_grad|math_grad|array_grad|nn_ops)\.py (\w+)")
# Rules whose basis cites nothing above (checked: the text names no file, op or measurement). A new uncited rule
# fails below; so does one of these once its basis gains a citation (then take it off this list).
UNCITED = {("tensorflow", "LSTM")}  # "keras LSTM unrolled in a While loop: ...": no source named


def _cited(basis: str) -> bool:
    return bool(_DY_ENTRY.search(basis) or _ATEN_OP.search(basis) or _SOURCE_FILE.search(basis)) or (
        "measured" in basis
    )


def test_every_rule_states_its_basis() -> None:
    uncited = {
        (fw, name)
        for fw, table in (("torch", TORCH_OPS), ("tensorflow", TF_OPS))
        for name, rule in table.items()
        if not _cited(rule.basis)
    }
    assert uncited == UNCITED
    # every torch rule that cites derivatives.yaml names the entry (checked against the installed torch in
    # test_torch_rules_cite_aten_ops_that_exist), every TF gradient function its file
    assert all(_DY_ENTRY.search(r.basis) for r in TORCH_OPS.values() if "derivatives.yaml" in r.basis)
    assert all(_TF_GRAD.search(r.basis) for r in TF_OPS.values() if "_grad.py" in r.basis)


def _torch_cited_ops() -> set[str]:
    """The ATen ops the PyTorch rules' bases cite: derivatives.yaml entries (``add.Tensor``: op and overload;
    ``view/reshape/transpose/select``: four ops) and ``aten.X`` mentions."""
    ops: set[str] = set()
    for rule in TORCH_OPS.values():
        for entry in _DY_ENTRY.findall(rule.basis):
            ops.update(entry.split("/"))
        ops.update(_ATEN_OP.findall(rule.basis))
    return ops


def test_the_torch_citations_are_read_off_the_bases() -> None:
    # by hand from analytics/timeline_rules.py: relu's basis cites "derivatives.yaml relu:", add_bias's
    # "add.Tensor", view's "view/reshape/transpose/select", linear's "aten.linear"
    assert {"relu", "add.Tensor", "view", "reshape", "transpose", "select", "linear"} <= _torch_cited_ops()


@pytest.mark.torch
def test_torch_rules_cite_aten_ops_that_exist() -> None:
    """Each ATen op (and overload) a PyTorch rule's basis cites is an op of the installed torch."""
    torch = require_or_skip("torch", "torch", reason="PyTorch is not installed (tox -e torch)")
    missing = []
    for cited in sorted(_torch_cited_ops()):
        op, _, overload = cited.partition(".")
        packet = getattr(torch.ops.aten, op, None)
        if packet is None or (overload and overload not in packet.overloads()):
            missing.append(cited)
    assert missing == []


@pytest.mark.tensorflow
def test_tensorflow_rules_cite_gradient_functions_that_exist() -> None:
    """Each ``<module>.py <function>`` a TensorFlow rule's basis cites is defined in the installed TensorFlow's
    ``tensorflow.python.ops.<module>``."""
    require_or_skip("tensorflow", "tensorflow", reason="TensorFlow is not installed (tox -e tensorflow)")
    import importlib

    cited = {c for rule in TF_OPS.values() for c in _TF_GRAD.findall(rule.basis)}
    assert ("nn_grad", "_ReluGrad") in cited  # read off Relu's basis by hand
    missing = [
        f"{module}.py {name}"
        for module, name in sorted(cited)
        if not hasattr(importlib.import_module(f"tensorflow.python.ops.{module}"), name)
    ]
    assert missing == []


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"phase": "train"}, "allowed: inference, training"),
        ({"framework": "jax"}, "allowed: torch, tensorflow, mxnet"),
        ({"optimizer": "rmsprop"}, "allowed: sgd, momentum, adam"),
        ({"device": "tpu"}, "allowed: cpu, gpu"),
        ({"dtype": "int8"}, "allowed: float32, float16, bfloat16"),
    ],
)
def test_bad_arguments_name_what_is_allowed(kwargs: dict[str, str], needle: str) -> None:
    with pytest.raises(ValueError, match=needle):
        simulate(DENSE, 2, **kwargs)  # type: ignore[arg-type]


def test_batch_must_be_positive() -> None:
    with pytest.raises(ValueError, match="positive integer"):
        simulate(DENSE, 0)


def test_tensorflow_bias_add_and_relu_write_into_the_conv_output() -> None:
    # Conv2D(2 filters, 3x3 same, bias, relu) -> Flatten -> Dense(3) on (1, 4, 4) at batch 1, TensorFlow inference:
    # the conv output 2*4*4 floats = 128 B is the only forward buffer of the conv layer (BiasAdd and Relu forward
    # it, as measured in benchmarks/diagnostics/tf_step_memory.py), then the dense output 3 floats = 12 B + its
    # bias add, in place too.
    spec = ModelSpec("c", (1, 4, 4), (Conv2D(2, 3, padding="same", activation="relu"), Flatten(), Dense(3)))
    tl = simulate(spec, 1, "inference", framework="tensorflow")
    assert [e.nbytes for e in tl.events if e.action == "alloc" and e.stage == "forward"] == [128, 12]
    # training: Relu's saved output is the conv buffer itself, so nothing more is allocated forward
    train = simulate(spec, 1, "training", framework="tensorflow")
    forward = [e for e in train.events if e.action == "alloc" and e.stage == "forward"]
    assert [e.nbytes for e in forward][:2] == [128, 12]


def test_tensorflow_relu_gradient_writes_into_the_gradient_it_receives() -> None:
    # The same conv -> relu -> dense model in training at batch 1. TensorFlow's ReluGrad is a BinaryElementWiseOp
    # that forwards its incoming gradient's buffer (measured: no ReluGrad allocation in memray's records of cnn3
    # training), so the backward allocates, in order: the loss seed (1 float = 4 B), the loss's gradient (3
    # floats = 12 B), the dense layer's input gradient (2*4*4 floats = 128 B) and its kernel + bias gradient
    # ((32*3 + 3) floats = 396 B), then the conv's kernel + bias gradient ((2*1*3*3 + 2) floats = 80 B) and its
    # filter op's im2col buffer (16 positions x 3*3*1 = 144 floats = 576 B). Nothing at the relu: before the rule
    # a second 128 B gradient was allocated there. The conv's input is the batch, so no input gradient is made.
    spec = ModelSpec("c", (1, 4, 4), (Conv2D(2, 3, padding="same", activation="relu"), Flatten(), Dense(3)))
    tl = simulate(spec, 1, "training", framework="tensorflow", warm=False, threads=2)
    backward = [e for e in tl.events if e.stage == "backward"]
    assert [e.nbytes for e in backward if e.action == "alloc"] == [4, 12, 128, 396, 80, 576]
    assert not [e for e in backward if e.action == "alloc" and e.op.endswith(":relu")]


def test_tensorflow_frees_a_layers_input_once_its_pad_has_run() -> None:
    # Two convs with integer padding 1 (Keras: ZeroPadding2D, then a valid conv), no bias, no activation, on
    # (1, 4, 4) at batch 1, TensorFlow inference. Conv1: Pad 1x6x6 = 144 B, output 2x4x4 = 128 B. Conv2: Pad
    # 2x6x6 = 288 B, output 2x4x4 = 128 B. TensorFlow frees a tensor after its last consumer (measured for
    # VGG-16's conv1_2 with tf_step_memory.py --gap C), so conv1's output (128 B) is gone before conv2 runs:
    # the input batch (64 B) stays alive (the caller holds it); forward events: +144 (pad1), +128 (out1), -144,
    # +288 (pad2), -128 (out1, right after its pad), +128 (out2), -288. Without the rule out1 would be freed
    # only after conv2's output exists: peak 128 + 288 + 128 = 544 B over the input instead of 416.
    spec = ModelSpec(
        "p", (1, 4, 4), (Conv2D(2, 3, padding=1, use_bias=False), Conv2D(2, 3, padding=1, use_bias=False), Flatten())
    )
    tl = simulate(spec, 1, "inference", framework="tensorflow")
    fwd = [(e.action, e.nbytes) for e in tl.events if e.stage == "forward"]
    assert fwd[:7] == [
        ("alloc", 144),
        ("alloc", 128),
        ("free", 144),
        ("alloc", 288),
        ("free", 128),
        ("alloc", 128),
        ("free", 288),
    ]
    # peak: the parameters (conv1 2*1*3*3 = 72 B, conv2 2*2*3*3 floats = 144 B) + input + pad2 + out2
    assert tl.peak_bytes == 72 + 144 + 64 + 288 + 128


@pytest.mark.parametrize(
    ("batch", "hw", "cin", "cout", "threads", "input_bytes", "filter_bytes"),
    [
        # TensorFlow 2.21's own allocation records (FULL_TRACE step stats, TF_ENABLE_ONEDNN_OPTS=0), 3x3 SAME convs:
        (8, 16, 8, 8, 2, None, 27_574_272),  # filter col_buffer: 374 images of 16*16 x 72
        (1, 16, 8, 8, 2, None, 27_574_272),  # the filter op's shard has no batch term
        (32, 56, 64, 64, 2, 7_225_344, 28_901_376),  # input: parallel path (1 image); filter: 4 images
        (4, 32, 16, 16, 2, 589_824, None),  # input: work unit / 2 threads >= 65,536 -> parallel, 1 image
        (4, 32, 16, 16, 4, 28_311_552, None),  # ... / 4 threads below it -> 48 images
    ],
)
def test_tensorflow_conv_grad_col_buffer_matches_tensorflows_allocation_records(
    batch: int, hw: int, cin: int, cout: int, threads: int, input_bytes: int | None, filter_bytes: int | None
) -> None:
    from xfbench.analytics.timeline_rules import tf_conv_grad_col_shards

    shard_in, shard_filter = tf_conv_grad_col_shards(batch, hw * hw, 9 * cin, cout, threads)
    per_image_bytes = hw * hw * 9 * cin * 4
    if input_bytes is not None:
        assert shard_in * per_image_bytes == input_bytes
    if filter_bytes is not None:
        assert shard_filter * per_image_bytes == filter_bytes


def test_tensorflow_conv_backward_holds_the_written_part_of_its_col_buffers() -> None:
    # Conv2D(8 filters, 3x3 valid, no bias) on (8, 16, 16) -> (8, 14, 14), Flatten, Dense(3, no bias), batch 2,
    # TensorFlow training, 2 threads. One image's columns: 14*14 output positions x 3*3*8 = 196 * 72 = 14,112
    # floats. Work unit 196*8 + 72*8 + 14,112 = 16,256 floats: / 2 threads = 8,128 < 65,536, so the input op
    # shards ceil(7,864,320 / 16,256) = 484 images and the filter op (same sum) 484: each writes min(484, 2) = 2
    # images = 28,224 floats = 112,896 B. The input is the batch, so no input gradient is wanted: the
    # Conv2DBackpropInput (and its buffer) does not run; the filter op's buffer is allocated after the kernel's
    # gradient (8*8*3*3 floats = 2,304 B) and freed when the layer's gradient ops are done.
    spec = ModelSpec("c", (8, 16, 16), (Conv2D(8, 3, use_bias=False), Flatten(), Dense(3, use_bias=False)))
    tl = simulate(spec, 2, "training", framework="tensorflow", warm=False, threads=2)
    conv_bwd = [(e.action, e.category, e.nbytes) for e in tl.events if e.stage == "backward" and "0:" in e.op]
    assert ("alloc", "gradients", 2304) in conv_bwd
    i = conv_bwd.index(("alloc", "gradients", 2304))
    assert conv_bwd[i + 1 : i + 3] == [("alloc", "workspace", 112_896), ("free", "workspace", 112_896)]
    assert not any(c == "workspace" for _, c, n in conv_bwd[:i])
    # a second conv in front: now the input gradient of the second one is wanted and its buffer appears first
    two = ModelSpec(
        "c2", (8, 16, 16), (Conv2D(8, 3, use_bias=False), Conv2D(8, 3, use_bias=False), Flatten(), Dense(3))
    )
    tl2 = simulate(two, 2, "training", framework="tensorflow", warm=False, threads=2)
    # conv 2: 12*12 = 144 positions x 72 = 10,368 floats per image; work unit 144*8 + 576 + 10,368 = 12,096:
    # shard ceil(7,864,320 / 12,096) = 651 images, written min(651, 2) = 2 -> 82,944 B, for both ops, which run at
    # once (measured: both buffers live together in TensorFlow's allocator records, NiN and LeNet)
    ws = [(e.action, e.nbytes) for e in tl2.events if e.category == "workspace"]
    assert ws == [
        ("alloc", 82_944),
        ("alloc", 82_944),
        ("free", 82_944),
        ("free", 82_944),
        ("alloc", 112_896),
        ("free", 112_896),
    ]


def test_tensorflow_frees_each_weight_gradient_after_its_update() -> None:
    # Dense(4) on (5,) -> Dense(3), batch 2, sgd. TensorFlow's layer keeps its kernel and bias as one simulated
    # parameter: (5*4 + 4) floats = 96 B and (4*3 + 3) floats = 60 B. Its update runs as soon as the gradient
    # exists and frees it; the simulation frees a layer's gradient when the next layer's gradients are made
    # (measured on VGG-11: fc7's gradient is still live when fc6's is allocated), the last one at the end.
    spec = ModelSpec("d2", (5,), (Dense(4), Dense(3)))
    tf = simulate(spec, 2, "training", framework="tensorflow", warm=False)
    assert [(e.action, e.nbytes) for e in tf.events if e.category == "gradients"] == [
        ("alloc", 60),
        ("alloc", 96),
        ("free", 60),
        ("free", 96),
    ]
    # torch keeps every .grad until the next zero_grad: W2 48 B, b2 12 B, W1 80 B, b1 16 B, no free in the step
    torch = simulate(spec, 2, "training", framework="torch", warm=False)
    grads = [(e.action, e.nbytes) for e in torch.events if e.category == "gradients"]
    assert sorted(grads) == sorted([("alloc", 48), ("alloc", 12), ("alloc", 80), ("alloc", 16)])


# oneDNN's scratch rules (analytics/timeline_rules.py docstrings), by hand, on layers of
# tests/data/torch_conv_scratch_avx2.json (its measured bytes, per-op RSS high-water mark, in the comments: they are
# not asserted, since any tolerance would be fitted to that same file). Block 8 (AVX2): ceil8(100) = 104, ceil8(200)
# = 200, ceil8(6) = 8, ceil8(16) = 16. Elements x 4 B (float32).
#   backward: X = batch * ceil8(Cin) * H*W of the (padded) input, 0 for 3 input channels; Y = batch * ceil8(Cout) *
#     OH*OW; no input gradient (first layer): X + Y; strided: X + 2Y; else max(X + Y, Cout*Cin*kh*kw)
#   forward: max(Y, X + W), Y only when Cout >= 8, X only when Cin >= 8
# cnn3 (3x200x300; 3x3 stride-2 'same' convs of 100, 200 filters; batch 8): conv1 -> 100x100x150; conv2 reads
#   100x100x150 padded (0, 1) on H and W (asymmetric: an explicit copy) = 101*151 = 15,251 positions -> 200x50x75
# lenet (1x28x28, batch 32): conv1 5x5 pad 2 -> 6x28x28; pool -> 6x14x14; conv2 5x5 valid -> 16x10x10
CONV_SCRATCH_BY_HAND = [
    # cnn3 conv1 backward, first layer (3 channels, no input gradient): X = 0, Y = 8*104*15,000 = 12,480,000
    ("cnn3", "conv1", "backward", 4 * 12_480_000),  # measured 49,729,536 B
    # cnn3 conv1 forward: Cin 3 < 8: X = 0; Y = 12,480,000; W = 100*3*9 = 2,700 -> max(Y, W)
    ("cnn3", "conv1", "forward", 4 * 12_480_000),  # measured 49,659,904 B
    # cnn3 conv2 backward, strided: X = 8*104*15,251 = 12,688,832; Y = 8*200*3,750 = 6,000,000; X + 2Y
    ("cnn3", "conv2", "backward", 4 * (12_688_832 + 2 * 6_000_000)),  # measured 96,559,104 B
    # cnn3 conv2 forward: max(6,000,000, 12,688,832 + 200*100*9 = 180,000)
    ("cnn3", "conv2", "forward", 4 * (12_688_832 + 180_000)),  # measured 50,462,720 B
    # lenet conv2 backward, stride 1 with an input gradient: X = 32*8*196 = 50,176; Y = 32*16*100 = 51,200;
    # W = 16*6*25 = 2,400: max(X + Y, W) = 101,376
    ("lenet", "conv2", "backward", 4 * 101_376),  # measured 204,800 B
    # lenet conv2 forward: Cin 6 < 8: X = 0; Y = 51,200; max(51,200, 2,400)
    ("lenet", "conv2", "forward", 4 * 51_200),  # measured 204,800 B
    # lenet conv1 forward: Cin 1 and Cout 6 both < 8: X = Y = 0; W = 6*1*25 = 150
    ("lenet", "conv1", "forward", 4 * 150),  # measured 0 B
]


def _conv_scratch_rule(model: str, label: str, phase: str) -> int:
    """The rule's bytes for one conv layer of a catalog model, its arguments taken from the model's shapes."""
    import math

    from xfbench.analytics.shapes import infer_shapes, input_shapes, padding_amounts
    from xfbench.analytics.timeline_rules import (
        torch_onednn_conv_forward_scratch_elems,
        torch_onednn_conv_scratch_elems,
    )

    spec = catalog_model(model)
    convs = [
        (lay, a, o) for lay, a, o in zip(spec.layers, input_shapes(spec), infer_shapes(spec)) if isinstance(lay, Conv2D)
    ]
    i = [lay.label for lay, _, _ in convs].index(label)
    layer, a, o = convs[i]
    hw = a[1] * a[2]
    if layer.padding == "same":  # torch pads an asymmetric 'same' explicitly: the conv reads the padded input
        top, bottom = padding_amounts("same", a[1], layer.kernel[0], layer.stride[0])
        left, right = padding_amounts("same", a[2], layer.kernel[1], layer.stride[1])
        if top != bottom or left != right:
            hw = (a[1] + top + bottom) * (a[2] + left + right)
    in_ch_hw, out_ch_hw = (a[0], hw), (layer.filters, math.prod(o[1:]))
    batch = {"cnn3": 8, "lenet": 32}[model]  # the measured batches
    if phase == "forward":
        return 4 * torch_onednn_conv_forward_scratch_elems(batch, in_ch_hw, out_ch_hw, layer.kernel)
    return 4 * torch_onednn_conv_scratch_elems(batch, in_ch_hw, out_ch_hw, layer.kernel, layer.stride, i > 0)


@pytest.mark.parametrize(("model", "label", "phase", "expected"), CONV_SCRATCH_BY_HAND)
def test_torch_onednn_conv_scratch_by_hand_on_measured_layers(
    model: str, label: str, phase: str, expected: int
) -> None:
    assert _conv_scratch_rule(model, label, phase) == expected


def test_the_conv_scratch_measurement_covers_the_catalog_layers() -> None:
    """The committed measurement is of the catalog's conv layers as they are now (names, order, one entry each),
    and the layers checked by hand above are among them."""
    import json
    from pathlib import Path

    data = json.loads((Path(__file__).parent / "data" / "torch_conv_scratch_avx2.json").read_text())
    for model in sorted({op["model"] for op in data["ops"]}):
        spec = catalog_model(model)
        labels = [lay.label for lay in spec.layers if isinstance(lay, Conv2D)]
        assert [op["layer"] for op in data["ops"] if op["model"] == model] == labels
    measured = {(op["model"], op["layer"], op["batch"]) for op in data["ops"]}
    assert {(m, lab, {"cnn3": 8, "lenet": 32}[m]) for m, lab, _, _ in CONV_SCRATCH_BY_HAND} <= measured


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        # backward, stride 1, input gradient, the weight larger than X + Y: batch 1, 16 -> 16 channels, 3x3 input,
        # 3x3 valid -> 1x1: X = 16*9 = 144, Y = 16*1 = 16, W = 16*16*9 = 2,304
        (("backward", 1, (16, 9), (16, 1), (3, 3), (1, 1), True, 8), 2_304),
        # the same with no input gradient: X + Y = 160
        (("backward", 1, (16, 9), (16, 1), (3, 3), (1, 1), False, 8), 160),
        # the same, strided (2, 1): X + 2Y = 144 + 32 = 176
        (("backward", 1, (16, 9), (16, 1), (3, 3), (2, 1), True, 8), 176),
        # block 16 (AVX-512): 20 -> 20 channels, 4 positions in, 4 out, batch 2: X = 2*32*4 = 256, Y = 256,
        # W = 20*20*1 = 400, stride 1: max(512, 400) = 512
        (("backward", 2, (20, 4), (20, 4), (1, 1), (1, 1), True, 16), 512),
        # forward, block 16: max(Y, X + W) = max(256, 256 + 400) = 656
        (("forward", 2, (20, 4), (20, 4), (1, 1), None, None, 16), 656),
        # forward, 8 -> 7 channels (Y = 0: fewer than 8 outputs), batch 3, 5 positions: X = 3*8*5 = 120, W = 7*8*1
        (("forward", 3, (8, 5), (7, 5), (1, 1), None, None, 8), 120 + 56),
    ],
)
def test_torch_onednn_conv_scratch_branches_by_hand(args: tuple, expected: int) -> None:  # type: ignore[type-arg]
    from xfbench.analytics.timeline_rules import (
        torch_onednn_conv_forward_scratch_elems,
        torch_onednn_conv_scratch_elems,
    )

    phase, batch, in_ch_hw, out_ch_hw, kernel, stride, grad_input, block = args
    if phase == "forward":
        got = torch_onednn_conv_forward_scratch_elems(batch, in_ch_hw, out_ch_hw, kernel, block=block)
    else:
        got = torch_onednn_conv_scratch_elems(batch, in_ch_hw, out_ch_hw, kernel, stride, grad_input, block=block)
    assert got == expected


def test_torch_conv_backward_scratch_is_process_level_only() -> None:
    # Conv2D(8, 3x3 valid, no bias) on (3, 6, 6) -> (8, 4, 4); Conv2D(8, 3x3, no bias) -> (8, 2, 2); Flatten;
    # Dense(2); batch 2, float32. oneDNN's backward scratch (analytics/timeline_rules.py, AVX2 block 8):
    #   conv2 (input gradient wanted, stride 1): max(X + Y, W) = max(2*8*16 + 2*8*4, 8*8*9) = 576 floats = 2,304 B
    #   conv1 (3 input channels: read in place; no input gradient): X + Y = 0 + 2*8*16 = 256 floats = 1,024 B
    # and in the forward pass max(Y, X + W): conv1 max(2*8*16, 0 + 8*3*9) = 256 floats = 1,024 B (3 input
    # channels: no blocked input copy); conv2 max(2*8*4, 2*8*16 + 576) = 832 floats = 3,328 B
    spec = ModelSpec("cc", (3, 6, 6), (Conv2D(8, 3, use_bias=False), Conv2D(8, 3, use_bias=False), Flatten(), Dense(2)))
    process = simulate(spec, 2, "training", framework="torch", warm=False, kernel_scratch=True)
    ws = [(e.action, e.stage, e.nbytes) for e in process.events if e.category == "workspace"]
    assert ws == [
        ("alloc", "forward", 1024),
        ("free", "forward", 1024),
        ("alloc", "forward", 3328),
        ("free", "forward", 3328),
        ("alloc", "backward", 2304),
        ("free", "backward", 2304),
        ("alloc", "backward", 1024),
        ("free", "backward", 1024),
    ]
    # the tensor level (what MemTracker sees) has none
    tensors = simulate(spec, 2, "training", framework="torch", warm=False)
    assert not [e for e in tensors.events if e.category == "workspace"]
    assert process.peak_bytes >= tensors.peak_bytes
