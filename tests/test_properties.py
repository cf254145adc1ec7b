"""Property tests: shape inference never crashes on valid specs and rejects invalid ones clearly."""

from __future__ import annotations

import math
import warnings

from hypothesis import given, settings
from hypothesis import strategies as st
from xfbench.analytics.predict import predict
from xfbench.analytics.shapes import infer_shapes
from xfbench.analytics.spec import Conv2D, Dense, Flatten, MaxPool2D, ModelSpec, SpecError

paddings = st.one_of(st.just("same"), st.just("valid"), st.integers(0, 3))


@st.composite
def conv_stacks(draw: st.DrawFn) -> ModelSpec:
    c, h, w = draw(st.integers(1, 4)), draw(st.integers(1, 40)), draw(st.integers(1, 40))
    layers = []
    for _ in range(draw(st.integers(1, 4))):
        if draw(st.booleans()):
            layers.append(
                Conv2D(draw(st.integers(1, 8)), draw(st.integers(1, 5)), draw(st.integers(1, 3)), draw(paddings))
            )
        else:
            layers.append(MaxPool2D(draw(st.integers(1, 4)), draw(st.integers(1, 3)), draw(paddings)))
    layers += [Flatten(), Dense(draw(st.integers(1, 10)))]
    return ModelSpec("random", (c, h, w), tuple(layers))


def _expected_size(size: int, k: int, s: int, padding: str | int) -> int | None:
    if padding == "same":
        return math.ceil(size / s)
    p = 0 if padding == "valid" else padding
    if size + 2 * p < k:
        return None
    return (size + 2 * p - k) // s + 1


@settings(max_examples=300, deadline=None)
@given(conv_stacks())
def test_shape_inference_is_total_and_matches_the_formula(spec: ModelSpec) -> None:
    c, h, w = spec.input_shape
    expect_error = False
    expected: list[tuple[int, ...]] = []  # each layer's per-sample output shape, by the formula
    for layer in spec.layers:
        if isinstance(layer, (Conv2D, MaxPool2D)):
            k = layer.kernel if isinstance(layer, Conv2D) else layer.pool
            s = layer.stride
            assert isinstance(k, tuple) and isinstance(s, tuple)
            nh, nw = _expected_size(h, k[0], s[0], layer.padding), _expected_size(w, k[1], s[1], layer.padding)
            if nh is None or nw is None:
                expect_error = True
                break
            c = layer.filters if isinstance(layer, Conv2D) else c  # a pool keeps the channels
            h, w = nh, nw
            expected.append((c, h, w))
        elif isinstance(layer, Flatten):
            expected.append((c * h * w,))
        else:
            assert isinstance(layer, Dense)
            expected.append((layer.units,))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if expect_error:
            try:
                infer_shapes(spec)
            except SpecError as exc:
                assert str(exc).startswith("layer ") and "larger than its padded input" in str(exc)
            else:
                raise AssertionError("invalid spec accepted")
        else:
            shapes = infer_shapes(spec)
            # every layer's shape, not only the last spatial one: conv_stacks always ends with Flatten, Dense
            assert shapes == expected
            assert len(shapes) == len(spec.layers) >= 3
            pred = predict(spec, batch_size=2)
            assert pred.forward_flops > 0 and pred.training.peak_bytes > 0  # the Dense at least multiplies
