"""Graph specs and the unit layer types (Add, Concatenate, BatchNorm), framework-free: validation errors, shapes,
parameters, FLOPs and saved bytes against hand arithmetic, and the completeness of every unit's facets."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
from xfbench.analytics.catalog import CATALOG, catalog_model
from xfbench.analytics.costs import layer_cost, needs_input_grad, spec_costs
from xfbench.analytics.layers import LAYER_TYPES, UNIT_TYPES, Add, BatchNorm, Concatenate
from xfbench.analytics.layers.base import Layer
from xfbench.analytics.layers.batchnorm import running_update
from xfbench.analytics.predict import count_params, predict
from xfbench.analytics.reference import reference_forward, reference_state_after_step
from xfbench.analytics.shapes import infer_shapes
from xfbench.analytics.spec import ModelSpec, SpecError, is_sequential, layer_inputs, spec_from_dict
from xfbench.analytics.steptime import layer_work
from xfbench.analytics.timeline import simulate
from xfbench.analytics.weights import make_batch, random_weights, weight_slots

FRAMEWORKS = ("torch", "tensorflow", "mxnet")


@pytest.fixture(
    autouse=True,
    params=[
        pytest.param("core"),
        pytest.param("torch", marks=pytest.mark.torch),
        pytest.param("tensorflow", marks=pytest.mark.tensorflow),
        pytest.param("mxnet", marks=pytest.mark.mxnet),
    ],
)
def tox_env(request: pytest.FixtureRequest) -> str:
    """Every test here runs in every tox env (framework-free, but each env has its own numpy: MXNet's < 1.24)."""
    return str(request.param)


RESIDUAL = {
    "name": "residual",
    "input_shape": [3, 8, 8],
    "layers": [
        {"type": "Conv2D", "filters": 4, "kernel": 3, "padding": 1, "use_bias": False, "name": "c1"},
        {"type": "BatchNorm", "name": "bn1"},
        {"type": "relu", "name": "r1"},
        {"type": "Conv2D", "filters": 4, "kernel": 3, "padding": 1, "use_bias": False, "name": "c2"},
        {"type": "BatchNorm", "name": "bn2"},
        {"type": "Add", "inputs": ["bn2", "r1"], "name": "add"},
        {"type": "relu"},
        {"type": "GlobalAvgPool2D"},
        {"type": "Dense", "units": 3},
    ],
}


def _spec(layers: list[dict], shape: list[int] | None = None) -> ModelSpec:
    return spec_from_dict({"input_shape": shape or [3, 8, 8], "layers": layers})


# ------------------------------------------------------------------------------------------------- the graph


def test_sequential_files_keep_their_meaning() -> None:
    for name in ("cnn3", "alexnet", "vgg11", "lstm", "lenet", "nin", "mlp"):
        spec = catalog_model(name)
        assert is_sequential(spec)
        assert layer_inputs(spec) == tuple((i - 1,) for i in range(len(spec.layers)))
    assert not is_sequential(catalog_model("resnet18"))


@pytest.mark.parametrize(
    ("layers", "message"),
    [
        ([{"type": "relu", "name": "a"}, {"type": "relu", "inputs": ["b"]}], "layer 1 field 'inputs'='b': unknown"),
        ([{"type": "relu", "inputs": ["z"]}, {"type": "relu", "name": "z"}], "field 'inputs'='z': names layer 1"),
        ([{"type": "relu", "name": "a"}, {"type": "relu", "name": "a"}], "field 'name'='a': duplicate"),
        (
            [{"type": "relu", "name": "a"}, {"type": "relu", "name": "b", "inputs": ["input"]}],
            "layer 0 field 'name'='a': this layer's output is never read",
        ),
        ([{"type": "relu", "name": "a"}, {"type": "Add", "inputs": ["a"]}], "Add needs two or more inputs"),
        ([{"type": "relu", "name": "a"}, {"type": "relu", "inputs": []}], "field 'inputs'=[]"),
        ([{"type": "BatchNorm", "epsilon": 0}], "field 'epsilon'=0: must be a positive number"),
        ([{"type": "BatchNorm", "momentum": 1.5}], "field 'momentum'=1.5"),
        ([{"type": "relu", "name": "input"}], "field 'name'='input'"),
    ],
)
def test_graph_errors_are_one_line(layers: list[dict], message: str) -> None:
    with pytest.raises(SpecError) as err:
        _spec(layers)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_shape_mismatches_name_the_layer() -> None:
    add = _spec([{"type": "Conv2D", "filters": 5, "kernel": 1, "name": "c"}, {"type": "Add", "inputs": ["c", "input"]}])
    with pytest.raises(SpecError, match=r"layer 1 field 'inputs'=\['c', 'input'\]: Add needs inputs of equal shape"):
        infer_shapes(add)
    cat = _spec([{"type": "MaxPool2D", "pool": 2, "name": "p"}, {"type": "Concatenate", "inputs": ["p", "input"]}])
    with pytest.raises(SpecError, match=r"layer 1 .*the other axes must agree"):
        infer_shapes(cat)
    two = _spec(
        [{"type": "relu", "name": "a"}, {"type": "Conv2D", "filters": 2, "kernel": 1, "inputs": ["a", "input"]}]
    )
    with pytest.raises(SpecError, match="Conv2D reads one input, got 2"):
        infer_shapes(two)


def test_graph_shapes_by_hand() -> None:
    # Concatenate joins channels of images and features of sequences
    cat = _spec(
        [
            {"type": "Conv2D", "filters": 5, "kernel": 3, "padding": "same", "name": "a"},
            {"type": "Concatenate", "inputs": ["input", "a"]},
        ]
    )
    assert infer_shapes(cat) == [(5, 8, 8), (8, 8, 8)]
    seq = _spec([{"type": "Dense", "units": 7, "name": "d"}, {"type": "Concatenate", "inputs": ["d", "input"]}], [6, 4])
    assert infer_shapes(seq) == [(6, 7), (6, 11)]
    # ResNet-18 at 224: stem 112 -> pool 56, stages 56/28/14/7, 512 features
    shapes = infer_shapes(catalog_model("resnet18"))
    spec = catalog_model("resnet18")
    by_name = {layer.label: s for layer, s in zip(spec.layers, shapes)}
    assert by_name["conv1"] == (64, 112, 112) and by_name["pool1"] == (64, 56, 56)
    assert by_name["s1b2_out"] == (64, 56, 56) and by_name["s2b1_downbn"] == (128, 28, 28)
    assert by_name["s4b2_out"] == (512, 7, 7) and by_name["fc"] == (1000,)
    # GoogLeNet's module outputs (Szegedy et al. 2014, Table 1): 28x28x256, 28x28x480, 14x14x512
    inc = catalog_model("inception")
    by_name = {layer.label: s for layer, s in zip(inc.layers, infer_shapes(inc))}
    assert by_name["inc3a_out"] == (256, 28, 28)
    assert by_name["inc3b_out"] == (480, 28, 28)
    assert by_name["inc4a_out"] == (512, 14, 14)


def test_params_and_flops_of_the_new_types_by_hand() -> None:
    spec = spec_from_dict(RESIDUAL)
    # conv 3->4 3x3 no bias: 108; conv 4->4: 144; BN: 2 * 4 trainable (+ 2 * 4 statistics in Keras and Gluon)
    # dense 4 -> 3: 15
    assert count_params(spec, "torch") == 108 + 8 + 144 + 8 + 15
    assert count_params(spec, "tensorflow") == count_params(spec, "mxnet") == 108 + 16 + 144 + 16 + 15
    costs = spec_costs(spec, "torch")
    elems = 4 * 8 * 8
    assert costs[1].norm == 4 * elems and costs[1].matmul == 0  # normalize, scale, shift: 4 per element
    assert costs[5].add == elems and costs[5].forward_all == elems
    three = layer_cost(Add(inputs=("a", "b", "c")), (4, 8, 8), (4, 8, 8), "torch", [(4, 8, 8)] * 3)
    assert three.add == 2 * elems
    assert layer_cost(Concatenate(inputs=("a", "b")), (4, 8, 8), (8, 8, 8), "torch", [(4, 8, 8)] * 2).forward_all == 0
    pred = predict(spec, 2, framework="torch")
    assert [lp.add_flops for lp in pred.layers][5] == 2 * elems
    assert [lp.norm_flops for lp in pred.layers][1] == 2 * 4 * elems


def test_input_gradients_follow_every_path() -> None:
    # the Add reads the model input and a conv: its gradient is needed (a weighted layer lies on one path)
    spec = _spec(
        [
            {"type": "relu", "name": "r"},
            {"type": "Conv2D", "filters": 3, "kernel": 1, "name": "c", "inputs": ["input"]},
            {"type": "Add", "inputs": ["r", "c"]},
        ]
    )
    assert needs_input_grad(spec) == [False, False, True]


def test_weight_slots_carry_batchnorm_state() -> None:
    spec = spec_from_dict(RESIDUAL)
    slots = [(s.layer, s.param, s.shape, s.trainable) for s in weight_slots(spec) if s.layer == 1]
    assert slots == [
        (1, "gamma", (4,), True),
        (1, "beta", (4,), True),
        (1, "moving_mean", (4,), False),
        (1, "moving_variance", (4,), False),
    ]
    w = random_weights(spec)
    assert all(v.min() > 0 for s, v in zip(weight_slots(spec), w) if s.param in ("gamma", "moving_variance"))


def test_unknown_types_are_errors_not_zeros() -> None:
    @dataclasses.dataclass(frozen=True)
    class Mystery(Layer):
        name: str = ""

    spec = ModelSpec("m", (3,), (Mystery(),))
    with pytest.raises(SpecError, match="unsupported layer type Mystery"):
        infer_shapes(spec)
    with pytest.raises(ValueError, match="no cost rule for layer type Mystery"):
        layer_cost(Mystery(), (3,), (3,), "torch")
    with pytest.raises(ValueError, match="no weight-slot rule for layer type Mystery"):
        Mystery().weight_slots([(3,)])
    with pytest.raises(ValueError, match="reference_forward does not support layer type Mystery"):
        Mystery().forward([np.zeros((1, 3))], [], False)

    @dataclasses.dataclass(frozen=True)
    class Shaped(Mystery):
        def output_shape(self, index: int, in_shapes: list, notes: list) -> tuple[int, ...]:
            return tuple(in_shapes[0])

        def weight_slots(self, in_shapes: list) -> list:
            return []

    shaped = ModelSpec("m", (3,), (Shaped(),))
    with pytest.raises(SpecError, match="layer type Shaped is not simulated"):
        simulate(shaped, 1, "inference", threads=1)
    with pytest.raises(ValueError, match="no step-time work rule for layer type Shaped"):
        layer_work(shaped, 1, "inference")


# --------------------------------------------------------------------------------------------- the reference


def test_batchnorm_reference_by_hand() -> None:
    spec = _spec([{"type": "BatchNorm", "epsilon": 0.5}], [2])
    gamma, beta = np.array([2.0, 1.0]), np.array([0.5, -1.0])
    mean, var = np.array([1.0, 0.0]), np.array([3.5, 0.5])
    x = np.array([[1.0, 2.0], [3.0, -2.0]])
    out = reference_forward(spec, [gamma, beta, mean, var], x)
    # inference: (x - mean) / sqrt(var + eps) * gamma + beta, eps 0.5: sqrt(4) = 2 and sqrt(1) = 1
    np.testing.assert_allclose(out, [[0.0 * 2 / 2 + 0.5, 2.0 - 1.0], [2.0 * 2 / 2 + 0.5, -2.0 - 1.0]])
    train = reference_forward(spec, [gamma, beta, mean, var], x, training=True)
    # batch statistics: mean (2, 0), biased variance (1, 4): sqrt(1.5), sqrt(4.5)
    np.testing.assert_allclose(train[:, 0], [-2 / math.sqrt(1.5) + 0.5, 2 / math.sqrt(1.5) + 0.5])
    np.testing.assert_allclose(train[:, 1], [2 / math.sqrt(4.5) - 1.0, -2 / math.sqrt(4.5) - 1.0])
    # running statistics, momentum 0.1: torch folds in the unbiased variance (n / (n - 1) = 2), the others the biased
    torch_state = reference_state_after_step(spec, [gamma, beta, mean, var], x, "torch")
    np.testing.assert_allclose(torch_state[2], 0.9 * mean + 0.1 * np.array([2.0, 0.0]))
    np.testing.assert_allclose(torch_state[3], 0.9 * var + 0.1 * np.array([2.0, 8.0]))
    tf_state = reference_state_after_step(spec, [gamma, beta, mean, var], x, "tensorflow")
    np.testing.assert_allclose(tf_state[3], 0.9 * var + 0.1 * np.array([1.0, 4.0]))
    np.testing.assert_array_equal(torch_state[0], gamma)
    m, v = running_update(x, mean, var, 0.1, "mxnet")
    np.testing.assert_allclose(m, 0.9 * mean + 0.1 * np.array([2.0, 0.0]))
    np.testing.assert_allclose(v, tf_state[3])


def test_residual_reference_by_hand() -> None:
    # y = relu(x) + x, checked element by element
    spec = _spec([{"type": "relu", "name": "r"}, {"type": "Add", "inputs": ["r", "input"]}], [3])
    x = np.array([[-1.0, 0.5, 2.0]])
    np.testing.assert_allclose(reference_forward(spec, [], x), [[-1.0, 1.0, 4.0]])
    cat = _spec([{"type": "relu", "name": "r"}, {"type": "Concatenate", "inputs": ["input", "r"]}], [3])
    np.testing.assert_allclose(reference_forward(cat, [], x), [[-1.0, 0.5, 2.0, 0.0, 0.5, 2.0]])


# ------------------------------------------------------------------------------------ the simulated step


def test_simulated_step_keeps_the_skip_input_and_bn_saves() -> None:
    """Hand-computed: at batch 2, the residual spec's activations are 2 * 4 * 8 * 8 * 4 B = 2,048 B each."""
    spec = spec_from_dict(RESIDUAL)
    act = 2 * 4 * 8 * 8 * 4
    t = simulate(spec, 2, "training", framework="torch", threads=1)
    saved = {e.tensor for e in t.events if e.category == "saved_activations" and e.action == "alloc"}
    # BatchNorm keeps its input (the conv output) and its batch statistics for backward
    assert "0:c1:convolution.output" in saved and "1:bn1:native_batch_norm.aux:save_mean" in saved
    inf = simulate(spec, 2, "inference", framework="torch", threads=1)
    # inference: the skip input (r1's output, also read by c2) is freed only once the Add has run
    frees = [e.index for e in inf.events if e.action == "free" and e.tensor == "2:r1:relu.output"]
    adds = [e.index for e in inf.events if e.action == "alloc" and e.tensor.startswith("5:add:")]
    convs = [e.index for e in inf.events if e.action == "alloc" and e.tensor.startswith("3:c2:")]
    assert frees and adds and convs and frees[0] > adds[0] > convs[0]
    sizes = {e.tensor: e.nbytes for e in inf.events if e.action == "alloc"}
    assert sizes["5:add:add1.output"] == act and sizes["1:bn1:native_batch_norm.output"] == act


def test_concatenate_backward_copies_outside_torch() -> None:
    spec = _spec(
        [
            {"type": "Conv2D", "filters": 2, "kernel": 1, "name": "a"},
            {"type": "Conv2D", "filters": 3, "kernel": 1, "name": "b", "inputs": ["input"]},
            {"type": "Concatenate", "inputs": ["a", "b"]},
        ]
    )
    tf = simulate(spec, 1, "training", framework="tensorflow", threads=1)
    grads = {
        e.tensor: e.nbytes
        for e in tf.events
        if e.action == "alloc" and ".grad:input" in e.tensor and ":ConcatV2" in e.tensor
    }
    assert sorted(grads.values()) == [2 * 64 * 4, 3 * 64 * 4]  # one Slice per input, of that input's size
    torch = simulate(spec, 1, "training", framework="torch", threads=1)
    assert not [e for e in torch.events if e.action == "alloc" and ":cat" in e.tensor and "grad" in e.tensor]


# ----------------------------------------------------------------------------------------------- completeness


FACETS = ("validate", "output_shape", "cost", "weight_slots", "forward", "simulate", "work")


@pytest.mark.parametrize("layer_type", list(LAYER_TYPES.values()), ids=list(LAYER_TYPES))
def test_every_layer_type_has_every_facet(layer_type: type) -> None:
    """Each facet is the type's own (the base's raises), found through the one registry."""
    missing = [f for f in FACETS if getattr(layer_type, f) is getattr(Layer, f)]
    assert not missing, f"{layer_type.__name__} lacks {missing}"


@pytest.mark.parametrize("unit", UNIT_TYPES, ids=lambda u: u.__name__)
def test_graph_units_carry_their_simulated_step_rules(unit: type) -> None:
    assert set(unit.RULES) == set(FRAMEWORKS), f"{unit.__name__} has simulated-step rules for {sorted(unit.RULES)}"


@pytest.mark.parametrize("name", ["resnet18", "resnet50", "inception"])
@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_every_feature_reaches_the_new_models(name: str, framework: str) -> None:
    spec = catalog_model(name, input_shape=(3, 32, 32), num_classes=10)
    for phase in ("inference", "training"):
        t = simulate(spec, 2, phase, framework=framework, threads=1)
        assert t.peak_bytes > 0
        work = layer_work(spec, 2, phase, framework=framework)
        assert {w.layer for w in work} >= set(range(len(spec.layers))) - {
            i for i, layer in enumerate(spec.layers) if layer.type in ("Activation",) and framework == "tensorflow"
        } - {i for i, layer in enumerate(spec.layers) if layer.type == "Dropout"}
    x, _ = make_batch(spec, 1)
    assert reference_forward(spec, random_weights(spec), x).shape == (1, 10)


def test_new_models_in_the_catalog() -> None:
    assert {"resnet18", "resnet34", "resnet50", "inception"} <= set(CATALOG)
    assert any(isinstance(layer, BatchNorm) for layer in catalog_model("resnet50").layers)
