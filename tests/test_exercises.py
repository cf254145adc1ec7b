"""The exercise catalog's arithmetic against hand computation (framework-free).

Every expected number below is worked out by hand in the test from the exercise's own figures, never taken
from the code under test.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import pytest
import xfbench.analytics.exercises as exercises_module
from xfbench.analytics.exercises import (
    ADHOC_MODELS,
    CLAIMS_FILE,
    EXERCISES,
    QUANTITIES,
    REMEDIES,
    SEEDS,
    Check,
    Claim,
    Exercise,
    Figure,
    Verdict,
    analytic_verdict,
    bisect_largest_batch,
    crossover_batch,
    fit_line,
    get_exercise,
    group_weights,
    largest_batch_within,
    model_spec,
    predicted_figure,
    predicted_or_blank,
    remedy_prediction,
    select,
    stated_precision,
    verdict,
)
from xfbench.analytics.spec import ModelSpec, SpecError

MB = 1e6


def fig(ex_id: str) -> object:
    return predicted_figure(get_exercise(ex_id)).value


def label(ex_id: str) -> str:
    return analytic_verdict(get_exercise(ex_id))[1].label


# ---------------------------------------------------------------------------------------------- catalog
def test_catalog_is_well_formed() -> None:
    ids = [e.id for e in EXERCISES]
    assert len(ids) == len(set(ids))
    for e in EXERCISES:
        assert e.seed in SEEDS and e.question and e.number
        assert e.check.quantity in QUANTITIES
        if e.check.quantity != "matmul":
            assert isinstance(model_spec(e.check.model), ModelSpec)


def test_catalog_covers_the_issue() -> None:
    required = (
        "homl14-2a-000 homl14-2a-002 homl14-2b-000 homl14-2b-002 homl14-2c-000 homl14-2c-002 homl14-3-cnn3 "
        "homl14-3-alexnet homl15-2-seq d2l-4.7.6-3-inference d2l-4.7.6-3-training d2l-6.4-2-forward "
        "d2l-6.4-3-channels d2l-6.4-4 d2l-6.7-3 d2l-6.7-4a d2l-6.7-4b d2l-6.8-2-time d2l-6.8-2-memory d2l-6.9-3a "
        "d2l-6.9-3b d2l-6.9-3c d2l-6.9-3d d2l-5.6.5-1 d2l-5.6.5-3 d2l-5.6.5-4 course-5.1.1 course-5.1.2 "
        "course-5.1.3 course-5.1.4 dlwp5-convnet-params"
    ).split()
    ids = {e.id for e in EXERCISES}
    assert not set(required) - ids


# ------------------------------------------------------------------------------------ the claims data file
def test_claims_load_as_hashable_records() -> None:
    for e in EXERCISES:
        hash(e)  # frozen records: a list left over from the JSON (shape, variants, batches) would not hash
    assert get_exercise("homl15-2-seq").claim.shape == (5, 10, 32)
    assert get_exercise("d2l-6.7-3").check.batches == (1, 2, 4, 8, 16)
    assert REMEDIES["alexnet"]["two devices"] == ("alexnet", 2, "float32", 2)
    assert set(REMEDIES["cnn3"]) == {"baseline", *get_exercise("homl14-3-cnn3").check.variants}


def test_computed_claim_values_by_hand() -> None:
    assert get_exercise("d2l-6.4-2-memory").claim.value == 32 * 64 * 9 * 56 * 56 * 4
    assert get_exercise("d2l-6.4-4").claim.value == 32 * 64 * 56 * 56
    assert get_exercise("d2l-5.6.5-4").claim.value == 0.009020805358886719 / 0.004949331283569336
    assert get_exercise("homl14-2c-002").claim.value == 565.61e6


def test_claims_file_ships_in_the_wheel() -> None:
    tomllib = pytest.importorskip("tomllib")
    pyproject = Path(__file__).resolve().parents[1] / "pyproject.toml"
    if not pyproject.is_file():
        pytest.skip("not a source checkout")
    package_data = tomllib.loads(pyproject.read_text())["tool"]["setuptools"]["package-data"]
    assert CLAIMS_FILE.name in package_data["xfbench.analytics"]
    assert CLAIMS_FILE.parent == Path(exercises_module.__file__).resolve().parent


def _load_entry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, **change: Any) -> tuple[Exercise, ...]:
    """Loads a claims file holding one entry (a well-formed one, changed by ``change``)."""
    entry = {
        "id": "bad",
        "seed": "000",
        "number": "n",
        "question": "q",
        "claim": {"kind": "none", "quote": "q"},
        "check": {"quantity": "params", "model": "cnn3"},
        "gap": "",
        **change,
    }
    path = tmp_path / CLAIMS_FILE.name
    path.write_text(json.dumps({"seeds": {"000": "x.txt"}, "remedies": {}, "exercises": [entry]}))
    monkeypatch.setattr(exercises_module, "CLAIMS_FILE", path)
    return exercises_module._load_claims()[2]


@pytest.mark.parametrize(
    "change,message",
    [
        ({}, None),
        (
            {"gaps": ""},
            "exercise_claims.json: exercise 'bad': keys check, claim, gap, gaps, id, number, question, "
            "seed; allowed: id, seed, number, question, claim, check, gap",
        ),
        ({"seed": "009"}, "exercise 'bad': unknown seed '009'; allowed: 000"),
        (
            {"check": {"quantity": "parms", "model": "cnn3"}},
            "exercise 'bad': unknown quantity 'parms'; allowed: params, ",
        ),
        ({"claim": {"kind": "none", "quote": "q", "valu": 1}}, "exercise 'bad': .*unexpected keyword argument 'valu'"),
        ({"claim": {"kind": "guess", "quote": "q"}}, "exercise 'bad': unknown claim kind 'guess'; allowed: value, "),
    ],
)
def test_claims_file_errors_name_the_entry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, change: dict[str, Any], message: str | None
) -> None:
    if message is None:  # the well-formed entry loads
        (ex,) = _load_entry(tmp_path, monkeypatch, **change)
        assert (ex.id, ex.seed, ex.check.model, ex.claim.kind) == ("bad", "000", "cnn3", "none")
        return
    with pytest.raises(ValueError, match=message) as info:
        _load_entry(tmp_path, monkeypatch, **change)
    assert "\n" not in str(info.value)


def test_select_by_prefix_and_unknown() -> None:
    assert {e.id for e in select(["homl14-2a"])} == {"homl14-2a-000", "homl14-2a-002"}
    with pytest.raises(KeyError):
        select(["nope"])


# --------------------------------------------------------------------------------------- HOML ch14 ex2
def test_homl14_2a_parameters() -> None:
    hand = (3 * 3 * 3 + 1) * 100 + (3 * 3 * 100 + 1) * 200 + (3 * 3 * 200 + 1) * 400
    assert hand == 903_400
    assert fig("homl14-2a-000") == hand
    assert label("homl14-2a-000") == "holds" and label("homl14-2a-002") == "holds"


def test_homl14_2b_inference_textbook_bytes() -> None:
    # Feature maps: 200x300 -> 100x150 -> 50x75 -> 25x38 (ceil halves); two largest consecutive + params.
    l1, l2 = 100 * 150 * 100 * 4, 50 * 75 * 200 * 4
    hand = l1 + l2 + 903_400 * 4
    assert hand == 12_613_600
    assert fig("homl14-2b-000") == hand
    # "about 12.6 MB" and "12.61 MB" are both the exact figure to their stated precision.
    assert label("homl14-2b-000") == "holds" and label("homl14-2b-002") == "holds"


def test_homl14_2c_training_textbook_bytes_and_000s_rounding() -> None:
    per_instance = (100 * 150 * 100 + 50 * 75 * 200 + 25 * 38 * 400) * 4  # 10.52 MB, not 10.5 MB
    assert per_instance == 10_520_000
    hand = 50 * per_instance + 50 * 200 * 300 * 3 * 4 + 903_400 * 4
    assert hand == 565_613_600
    assert fig("homl14-2c-000") == hand
    # 002's 565.61 MB is exact; 000's 564.6 MB lost 1 MB by rounding 1.52 MB to 1.5 MB: 0.18% low.
    assert label("homl14-2c-002") == "holds"
    assert label("homl14-2c-000") == "holds within 0.18%"


# --------------------------------------------------------------------------------------- verdict rules
def test_verdict_words() -> None:
    exact = Claim("value", "q", 100.0, "params", "100")
    assert verdict(exact, 100).label == "holds"
    assert verdict(exact, 95).label == "holds within 5.3%"  # (100 - 95) / 95
    assert verdict(exact, 80).label == "off by +25%"
    assert verdict(exact, 125).label == "off by -20%"
    assert verdict(exact, 5).label.startswith("wrong")  # 20x
    assert verdict(exact, None).label.startswith("pending")
    none = Claim("none", "q")
    assert verdict(none, 76, answer="76").label == "unanswered -> 76"


def test_lower_bound_and_directions() -> None:
    bound = Claim("lower_bound", "q", 12.6 * MB, "bytes", "12.6 MB")
    assert verdict(bound, 40 * MB).label == "holds"  # measured far above the bound: the bound holds
    assert verdict(bound, 6 * MB).label == "off by +110%"  # (12.6 - 6) / 6 = 110 %: bound violated
    less = Claim("less", "q")
    assert verdict(less, 0.5).label == "holds" and verdict(less, 1.2).label == "wrong"
    more = Claim("greater", "q")
    assert verdict(more, 8.0).label == "holds" and verdict(more, 0.9).label == "wrong"


def test_shapes_labels_and_macs() -> None:
    assert verdict(Claim("shape", "q", shape=(5, 10, 32)), (5, 10, 32)).label == "holds"
    assert verdict(Claim("shape", "q", shape=(5, 10, 32)), (5, 32)).label == "wrong"
    named = Claim("value", "q", 16e6, "FLOPs", "16 millions", label="conv2")
    assert verdict(named, 16e6, "FLOPs", label="conv3").label.startswith("wrong")
    macs = Claim("value", "q", 1000.0, "MACs", "1000")
    assert verdict(macs, 2000, "FLOPs").label == "holds"  # one MAC = two FLOPs


def test_stated_precision() -> None:
    assert stated_precision(Claim("value", "q", 12.6e6, "bytes", "12.6 MB")) == pytest.approx(0.05e6)
    assert stated_precision(Claim("value", "q", 565.61e6, "bytes", "565.61 MB")) == pytest.approx(0.005e6)
    assert stated_precision(Claim("value", "q", 903_400, "params", "903,400")) == pytest.approx(0.5)
    assert stated_precision(Claim("value", "q", 26e6, "params", "26 millions")) == pytest.approx(0.5e6)


# ------------------------------------------------------------------------------------ HOML ch15, DLWP, course
def test_rnn_and_course_shapes() -> None:
    assert fig("homl15-2-seq") == (5, 10, 32)
    assert fig("homl15-2-last") == (5, 32)
    assert fig("course-5.1.1") == 5 * 5 * 3 + 1
    assert fig("course-5.1.2") == (1, 1, (28 - 5 + 2 * 2) // 1 + 1, 28)
    assert (28 - 5 + 2 * 2) / 2 + 1 == 14.5  # the stride-2 problem: not an integer
    assert fig("course-5.1.3") == (1, 1, 14, 14)  # frameworks floor
    assert fig("course-5.1.4") == (10, 1, 14, 14)


def test_dlwp_convnet() -> None:
    hand = (
        (3 * 3 * 1 * 32 + 32)
        + (3 * 3 * 32 * 64 + 64)
        + (3 * 3 * 64 * 64 + 64)
        + (3 * 3 * 64 * 64 + 64)  # Dense(64) on 3x3x64 = 576 features
        + (64 * 10 + 10)
    )
    assert hand == 93_322
    assert fig("dlwp5-convnet-params") == hand
    assert fig("dlwp5-convnet-shrink") == (1, 32, 26, 26)  # 28 - 3 + 1: smaller by 2, not 1
    assert label("dlwp5-convnet-shrink") == "wrong"


# ------------------------------------------------------------------------------------------------- D2L
def test_d2l_4_7_6_claims() -> None:
    params = 784 * 256 + 256 + 256 * 10 + 10
    assert get_exercise("d2l-4.7.6-3-inference").claim.value == params * 4
    listed = (784 * 256 + 256 * 10) * 4 + 256 * 10 * 4 + 256 * 256 * 4 + 256 * 784 * 4  # W1, W2, dJ/do, phi', x
    assert get_exercise("d2l-4.7.6-3-training").claim.value == listed
    # Whatever else the ledger counts, inference holds at least the weights, the input batch and the hidden layer:
    # the claim (weights only) is below the prediction.
    at_least = params * 4 + 256 * 784 * 4 + 256 * 256 * 4
    assert fig("d2l-4.7.6-3-inference") >= at_least
    assert label("d2l-4.7.6-3-inference").startswith("off by -")


def test_d2l_6_4_conv_costs() -> None:
    ci, co, h, k, p = 32, 64, 56, 3, 1
    m = (h + 2 * p - k) // 1 + 1
    forward = 2 * ci * co * k * k * m * m
    assert fig("d2l-6.4-2-forward") == forward
    assert fig("d2l-6.4-2-backward") == forward  # weight gradient only: the input needs no gradient
    memory = (ci * h * h + co * m * m + co * ci * k * k) * 4
    assert fig("d2l-6.4-2-memory") == memory
    assert label("d2l-6.4-2-memory").startswith("wrong")
    assert fig("d2l-6.4-3-channels") == pytest.approx(4.0)
    m2 = h + 2 * 2 - k + 1
    assert fig("d2l-6.4-3-padding") == pytest.approx(m2**2 / m**2)
    assert fig("d2l-6.4-4") == 2 * ci * co * h * h
    assert label("d2l-6.4-4") == "holds"
    assert fig("d2l-6.4-4-time") == pytest.approx(1 / 9)


def test_d2l_6_7_alexnet_parts() -> None:
    # 224 -(11, s4, p1)-> 54 -pool-> 26 -(5, p2)-> 26 -pool-> 12 -> 12 -> 12 -pool-> 5: 256*5*5 = 6400 features.
    conv1 = (224 + 2 - 11) // 4 + 1
    assert conv1 == 54
    fc6 = 6400 * 4096 + 4096
    pf = predicted_figure(get_exercise("d2l-6.7-4a"))
    assert (pf.label, pf.value) == ("fc6", fc6)
    assert label("d2l-6.7-4a") == "holds"  # 26,218,496 is 26 million to the claim's two digits
    conv2 = 2 * 26 * 26 * 256 * 96 * 5 * 5
    pf = predicted_figure(get_exercise("d2l-6.7-4b"))
    assert (pf.label, pf.value) == ("conv2", conv2)
    assert label("d2l-6.7-4b").startswith("wrong")  # 16 M vs 830.7 M


def test_d2l_6_9_nin_parameters() -> None:
    def block(ci: int, co: int, k: int) -> int:
        return (k * k * ci * co + co) + 2 * (co * co + co)

    hand = block(1, 96, 11) + block(96, 256, 5) + block(256, 384, 3) + block(384, 10, 3)
    assert fig("d2l-6.9-3a") == hand


def test_remedies_shrink_the_predicted_footprint() -> None:
    for model in ("cnn3", "alexnet"):
        for remedy in ("smaller batch", "larger stride", "fewer layers", "16-bit floats", "two devices"):
            var, base = remedy_prediction(model, 8, remedy)
            assert var < base, (model, remedy)
        var, base = remedy_prediction(model, 8, "16-bit floats")
        assert abs(var * 2 - base) <= 8 * 8  # every term halves with 2-byte floats but the 8 int64 labels
    # cnn3 stride 4 in the first layer: 200x300 -> 50x75 -> 25x38 -> 13x19.
    assert model_spec("cnn3-stride4").layers[0].stride == (4, 4)


# ------------------------------------------------------------------------------------- search & fitting
def test_fit_line_and_budget() -> None:
    intercept, slope = fit_line([1, 2, 4, 8], [110.0, 120.0, 140.0, 180.0])
    assert (intercept, slope) == pytest.approx((100.0, 10.0))
    assert largest_batch_within(1000, 100, 10) == 90
    assert largest_batch_within(50, 100, 10) == 0
    assert crossover_batch(200.0, 4.0) == 50.0


@pytest.mark.parametrize("edge,start", [(37, 40), (37, 1), (1, 64), (200, 16), (64, 64)])
def test_bisection_finds_the_edge_in_few_probes(edge: int, start: int) -> None:
    search = bisect_largest_batch(lambda b: b <= edge, start)
    assert search.largest_fit == edge
    # doubling/halving to bracket + bisection: at most 2 log2(max(edge/start, start/edge)) + log2(edge) + 2
    bound = 2 * abs(math.log2(edge / start)) + math.log2(max(edge, 2)) + 2
    assert len(search.probes) <= bound


def test_bisection_nothing_fits() -> None:
    search = bisect_largest_batch(lambda b: False, 8)
    assert search.largest_fit == 0
    assert [b for b, _ in search.probes] == [8, 4, 2, 1]


def test_group_weights_sums_per_layer() -> None:
    spec = model_spec("course-5.1.1")
    assert group_weights(spec, [75, 1]) == {"conv": 76}
    with pytest.raises(ValueError):
        group_weights(spec, [75])


def test_adhoc_models_build() -> None:
    for name in ADHOC_MODELS:
        assert model_spec(name).layers


# ------------------------------------------------------------------ prediction failures: blank only if declared
HOML_2A_PARAMS = (3 * 3 * 3 + 1) * 100 + (3 * 3 * 100 + 1) * 200 + (3 * 3 * 200 + 1) * 400  # 903,400


def _with_check(check: Check) -> Exercise:
    return dataclasses.replace(get_exercise("homl14-2a-000"), id="test-prediction", check=check)


def _spec_error(*args: object, **kwargs: object) -> object:
    raise SpecError("kernel larger than its input", layer=0, field="kernel", value=7)


def test_prediction_passes_through() -> None:
    fig_, why = predicted_or_blank(get_exercise("homl14-2a-000"))
    assert (fig_.value, fig_.unit, why) == (HOML_2A_PARAMS, "params", "")


def test_unexpected_prediction_failure_propagates(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match="unknown quantity 'no-such-quantity'"):
        predicted_or_blank(_with_check(Check("no-such-quantity", "cnn3")))
    # Declaring SpecError covers a SpecError only, not any ValueError.
    with pytest.raises(ValueError, match="unknown quantity 'no-such-quantity'"):
        predicted_or_blank(_with_check(Check("no-such-quantity", "cnn3", expected_error="SpecError")))
    # A SpecError the exercise does not declare is a bug too.
    monkeypatch.setattr(exercises_module, "prediction", _spec_error)
    with pytest.raises(SpecError):
        predicted_or_blank(_with_check(Check("params", "cnn3")))


def test_declared_spec_error_gives_a_blank_with_its_message(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(exercises_module, "prediction", _spec_error)
    fig_, why = predicted_or_blank(_with_check(Check("params", "cnn3", expected_error="SpecError")))
    assert fig_.value is None
    assert why == "no prediction: SpecError: layer 0 field 'kernel'=7: kernel larger than its input"


def test_unknown_expected_error_rejected() -> None:
    with pytest.raises(ValueError, match="unknown expected_error 'KeyError'; allowed: SpecError"):
        Check("params", "cnn3", expected_error="KeyError")


def _runner_rows() -> tuple[Any, Any]:
    """``Runner.result`` (which builds every measured row) on a runner without a backend: it only predicts."""
    from xfbench.benchmarks.exercises import Runner, csv_row

    runner = Runner.__new__(Runner)
    runner.backend, runner.device = "torch", "cpu"
    return runner, csv_row


def test_prediction_bug_makes_an_error_row() -> None:
    runner, csv_row = _runner_rows()
    ex = _with_check(Check("no-such-quantity", "cnn3"))
    r = runner.result(ex, Figure(HOML_2A_PARAMS, "params"), Verdict("holds"), "count_params")
    assert r.status == "error"
    assert "ValueError: unknown quantity 'no-such-quantity'" in r.explanation
    assert r.predicted == "-"
    assert csv_row(r)["status"] == "error"


def test_declared_prediction_failure_keeps_an_ok_row_with_the_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    runner, csv_row = _runner_rows()
    monkeypatch.setattr(exercises_module, "prediction", _spec_error)
    ex = _with_check(Check("params", "cnn3", expected_error="SpecError"))
    r = runner.result(ex, Figure(HOML_2A_PARAMS, "params"), Verdict("holds"), "count_params")
    assert r.status == "ok" and r.predicted == "-"
    assert r.explanation.startswith("no prediction: SpecError: layer 0 field 'kernel'=7: kernel larger than its input")
    assert csv_row(r)["status"] == "ok"


def test_declared_prediction_failure_in_the_analytic_verdict(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(exercises_module, "prediction", _spec_error)
    fig_, v = analytic_verdict(_with_check(Check("params", "cnn3", expected_error="SpecError")))
    assert fig_.value is None
    assert v.label == "pending: no prediction: SpecError: layer 0 field 'kernel'=7: kernel larger than its input"
    with pytest.raises(SpecError):
        analytic_verdict(_with_check(Check("params", "cnn3")))


def test_prediction_bug_makes_an_error_row_in_the_analytic_rows() -> None:
    from xfbench.benchmarks.exercises import analytic_results, csv_row

    good = get_exercise("homl14-2a-000")
    ok, bad = analytic_results([good, _with_check(Check("no-such-quantity", "cnn3"))])
    assert (ok.status, ok.verdict) == ("ok", "holds")
    assert bad.status == "error" and bad.predicted == "-"
    assert "ValueError: unknown quantity 'no-such-quantity'" in bad.explanation
    assert csv_row(bad)["status"] == "error"
