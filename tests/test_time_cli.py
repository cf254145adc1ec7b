"""``xfbench time`` and ``xfbench predict --from``: the cross-machine arithmetic on synthetic reports, the
per-layer comparison, bad input, and (per framework, marked) the profilers' attribution and the probes."""

from __future__ import annotations

import importlib
import importlib.util
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from conftest import require_or_skip, required_frameworks
from test_steptime import synthetic_peaks  # one synthetic machine for both test modules
from xfbench.analytics.spec import spec_from_dict
from xfbench.analytics.steptime import (
    CONVENTIONS,
    MachinePeaks,
    peaks_to_rows,
    predict_step,
)
from xfbench.benchmarks.cli import main

FRAMEWORKS = ("torch", "tensorflow", "mxnet")
# Parameters of the per-framework tests, each marked with its framework (tox runs one env per framework).
MARKED = [pytest.param(f, marks=getattr(pytest.mark, f)) for f in FRAMEWORKS]
TINY = {"name": "tiny", "input_shape": [3], "layers": [{"type": "Dense", "units": 4}]}


def flat(rate: float = 1e9, bw: float = 1e9, op: float = 1e-5) -> MachinePeaks:
    """One GEMM rate and one bandwidth for every shape and size (as in test_steptime)."""
    return MachinePeaks("flat", "measured-peaks", {(1, 1, 1): rate}, {1: bw}, op)


def _faster(peaks: MachinePeaks, factor: float) -> MachinePeaks:
    """``peaks`` with every rate and bandwidth times ``factor`` and every overhead divided by it."""
    return replace(
        peaks,
        gemm={k: factor * v for k, v in peaks.gemm.items()},
        bandwidth={k: factor * v for k, v in peaks.bandwidth.items()},
        conv={kern: {k: factor * v for k, v in t.items()} for kern, t in peaks.conv.items()},
        rates={k: factor * v for k, v in peaks.rates.items()},
        fault_bw=factor * (peaks.fault_bw or 0),
        op_overhead_s=peaks.op_overhead_s / factor,
        step_overhead_s={k: v / factor for k, v in peaks.step_overhead_s.items()},
    )


def _report(directory: Path, peaks: MachinePeaks | None, models: list[dict[str, Any]]) -> Path:
    from xfbench.reports.writer import RunWriter

    with RunWriter(directory) as writer:
        if peaks is not None:
            for row in peaks_to_rows(peaks, "torch", "cpu"):
                writer.write_row(row)
        for row in models:
            writer.write_row(
                {
                    "kind": "model",
                    "backend": "torch",
                    "device": "cpu",
                    "model": "alexnet",
                    "dtype": "float32",
                    "status": "ok",
                    **row,
                }
            )
        return writer.path


def test_predict_from_another_machine_by_hand(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # The target machine is twice as fast in every measured figure, so every predicted work item halves:
    # 300 ms measured there -> 150 ms here; measured here 160 ms -> error (150 - 160) / 160 = -6.25%.
    source = synthetic_peaks()
    src = _report(
        tmp_path / "a",
        source,
        [
            {"phase": "training", "batch_size": 2, "optimizer": "sgd", "time_median_s": 0.3},
            {"phase": "inference", "batch_size": 2, "time_median_s": 0.1},
        ],
    )
    dst = _report(
        tmp_path / "b",
        _faster(source, 2.0),
        [{"phase": "training", "batch_size": 2, "optimizer": "sgd", "time_median_s": 0.16}],
    )
    assert main(["predict", "alexnet", "--from", str(src), "--to", str(dst), "--json"]) == 0
    rows = {r["phase"]: r for r in json.loads(capsys.readouterr().out)["rows"]}
    assert rows["training"]["time_predicted_s"] == pytest.approx(0.15, rel=1e-9)
    assert rows["training"]["target_measured_s"] == 0.16
    assert rows["training"]["time_rel_error"] == pytest.approx(-0.0625, rel=1e-9)
    assert rows["inference"]["time_predicted_s"] == pytest.approx(0.05, rel=1e-9)
    assert "time_rel_error" not in rows["inference"]  # not measured on the target
    assert rows["training"]["prediction_basis"].startswith("cross-machine")
    assert str(src) in rows["training"]["source_row"]
    # The table names the rows it used and the median error.
    assert main(["predict", "alexnet", "--from", str(src), "--to", str(dst)]) == 0
    out = capsys.readouterr().out
    assert "rows used:" in out and str(src) in out and str(dst) in out
    assert "over 1 rows" in out and ("median |error| 6.2%" in out or "median |error| 6.3%" in out), out


def test_predict_from_skips_rows_without_calibration(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = _report(tmp_path / "a", None, [{"phase": "inference", "batch_size": 2, "time_median_s": 0.1}])
    dst = _report(tmp_path / "b", synthetic_peaks(), [])
    assert main(["predict", "alexnet", "--from", str(src), "--to", str(dst), "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)["rows"]
    assert row["status"] == "skipped"
    assert "no step-time calibration for torch on cpu" in row["message"]


def test_predict_from_without_the_framework_here_skips_with_a_reason(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Without --to, this machine's peaks are measured now with the report's framework: where it is not installed
    # the row says so and names the way out.
    from xfbench.backends import BackendUnavailable
    from xfbench.benchmarks.cli import time as time_cli

    def absent(name: str) -> Any:
        raise BackendUnavailable(f"{name} is not installed (pip install 'xfbench[{name}]')")

    monkeypatch.setattr("xfbench.backends.get_backend", absent)
    src = _report(tmp_path / "a", synthetic_peaks(), [{"phase": "inference", "batch_size": 2, "time_median_s": 0.1}])
    assert time_cli._measure_here("torch", "cpu").startswith("torch is not usable here")
    assert main(["predict", "alexnet", "--from", str(src), "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)["rows"]
    assert row["status"] == "skipped" and "give --to REPORT.csv" in row["message"]


def test_predict_from_to_a_datasheet_device(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = _report(tmp_path / "a", synthetic_peaks(), [{"phase": "inference", "batch_size": 2, "time_median_s": 0.1}])
    assert main(["predict", "alexnet", "--from", str(src), "--device", "h100", "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)["rows"]
    assert "datasheet:h100" in row["prediction_basis"]
    assert row["time_predicted_s"] == pytest.approx(0.1 * row["target_roofline_s"] / row["source_predicted_s"])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["predict", "mlp", "--to", "x.csv"], "--to REPORT.csv needs --from REPORT.csv"),
        (["predict", "mlp", "--from", "/nonexistent/r.csv"], "--from: /nonexistent/r.csv"),
        (["time", "mlp", "--backend", "caffe"], "caffe"),
        (["time", "mlp", "--backend", "torch", "--phase", "eval"], "--phase 'eval': allowed: inference, training"),
        (["time", "mlp", "--backend", "torch,mxnet"], "give one backend"),
        (["time", "nosuchmodel", "--backend", "torch"], "nosuchmodel"),
    ],
)
def test_bad_input_is_one_line(args: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("xfbench: error: ") and message in err[0]


def test_predict_from_a_report_without_the_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = _report(tmp_path / "a", synthetic_peaks(), [{"phase": "inference", "batch_size": 2, "time_median_s": 0.1}])
    assert main(["predict", "vgg16", "--from", str(src)]) == 2
    assert "no ok model rows of 'vgg16'" in capsys.readouterr().err


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_time_needs_the_framework_installed(framework: str, capsys: pytest.CaptureFixture[str]) -> None:
    if importlib.util.find_spec({"tensorflow": "tensorflow", "torch": "torch", "mxnet": "mxnet"}[framework]):
        pytest.skip(f"{framework} is installed here: this checks the message where it is not")
    assert main(["time", "mlp", "--backend", framework]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"xfbench: error: --backend {framework}") and "pip install" in err


def test_compare_layers_by_hand() -> None:
    from xfbench.benchmarks.cli.time import compare_layers

    # TINY (Dense 3 -> 4, batch 2) training with flat peaks (test_steptime.test_dense_training_by_hand):
    # forward 10.136 us; backward = weight gradient 10.152 us + bias gradient 10.032 us; the SGD update
    # 20.192 us and the loss 128 ns + loss_ops x 10 us go to the step row (layer -1).
    pred = predict_step(spec_from_dict(TINY), 2, "training", flat(), framework="torch")
    measured = {(0, "forward"): 5e-6, (0, "backward"): 1e-5, (-1, "update"): 3e-5}
    rows = {(r["layer"], r["phase"]): r for r in compare_layers(pred, measured)}
    assert rows[(0, "forward")]["predicted_s"] == pytest.approx(10.136e-6, rel=1e-12)
    assert rows[(0, "forward")]["gap_s"] == pytest.approx(5.136e-6, rel=1e-12)
    assert rows[(0, "backward")]["predicted_s"] == pytest.approx(20.184e-6, rel=1e-12)
    assert rows[(0, "backward")]["predicted_weight_grad_s"] == pytest.approx(20.184e-6, rel=1e-12)
    assert rows[(0, "backward")]["predicted_input_grad_s"] == 0.0
    assert rows[(-1, "update")]["predicted_s"] == pytest.approx(20.192e-6, rel=1e-12)
    assert rows[(-1, "update")]["gap_s"] == pytest.approx(-9.808e-6, rel=1e-12)
    loss = 128e-9 + CONVENTIONS["torch"].loss_ops * 1e-5
    assert rows[(-1, "forward")]["predicted_s"] == pytest.approx(loss, rel=1e-12)
    assert rows[(-1, "forward")]["measured_s"] is None and rows[(-1, "forward")]["gap_s"] is None
    assert [k[0] for k in rows] == [0, 0, -1, -1]  # layers in order, the step row last


# --- per framework: the profilers' attribution and the probes ------------------------------------------------


def _framework(name: str) -> Any:
    module = {"torch": "torch", "tensorflow": "tensorflow", "mxnet": "mxnet"}[name]
    require_or_skip(module, name, reason=f"{name} is not installed (tox -e {name})")
    try:
        return importlib.import_module(f"xfbench.backends.{name}.profile")
    except ImportError as exc:  # MXNet under numpy >= 1.24
        if name in required_frameworks():
            raise  # its own env: an adapter that does not import is a failure
        pytest.skip(f"{name} does not import here: {exc}")


@pytest.mark.torch
def test_torch_attribution_by_hand() -> None:
    prof = _framework("torch")
    # Two steps: layer 0's range holds a conv (sequence 7), layer 1's a relu (8); the backward events of those
    # sequence numbers belong to those layers; the loss op outside every range, the optimizer range.
    events = []
    for base in (0.0, 1000.0):
        events += [
            {"name": "xf::layer0", "start_us": base, "end_us": base + 100, "sequence_nr": -1, "top_level": True},
            {"name": "aten::conv2d", "start_us": base + 1, "end_us": base + 90, "sequence_nr": 7, "top_level": False},
            {"name": "xf::layer1", "start_us": base + 100, "end_us": base + 120, "sequence_nr": -1, "top_level": True},
            {"name": "aten::relu", "start_us": base + 101, "end_us": base + 119, "sequence_nr": 8, "top_level": False},
            {
                "name": "aten::mse_loss",
                "start_us": base + 130,
                "end_us": base + 140,
                "sequence_nr": 9,
                "top_level": True,
            },
            {
                "name": "autograd::engine::evaluate_function: ReluBackward0",
                "start_us": base + 150,
                "end_us": base + 170,
                "sequence_nr": 8,
                "top_level": True,
            },
            {
                "name": "autograd::engine::evaluate_function: ConvolutionBackward0",
                "start_us": base + 170,
                "end_us": base + 370,
                "sequence_nr": 7,
                "top_level": True,
            },
            {
                "name": "Optimizer.step#SGD.step",
                "start_us": base + 400,
                "end_us": base + 450,
                "sequence_nr": -1,
                "top_level": True,
            },
        ]
    out = prof.attribute_events(events, 2, 2)
    assert out[(0, "forward")] == pytest.approx(100e-6)
    assert out[(1, "forward")] == pytest.approx(20e-6)
    assert out[(1, "backward")] == pytest.approx(20e-6)
    assert out[(0, "backward")] == pytest.approx(200e-6)
    assert out[(-1, "forward")] == pytest.approx(10e-6)
    assert out[(-1, "update")] == pytest.approx(50e-6)


@pytest.mark.tensorflow
def test_tensorflow_attribution_by_hand() -> None:
    prof = _framework("tensorflow")
    ops = [
        ("mlp_1/l1_fc1_1/MatMul:_FusedMatMul", 4e-4),
        ("gradient_tape/mlp_1/l1_fc1_1/MatMul/MatMul_1:MatMul", 6e-4),
        ("mlp_1/l0_to_nhwc_1/transpose:Transpose", 1e-4),
        ("sgd/AssignSubVariableOp:AssignSubVariableOp", 2e-4),
        ("sparse_categorical_crossentropy/Mean:Mean", 2e-5),
    ]
    out = prof.attribute_ops(ops, 2)
    assert out == pytest.approx(
        {(1, "forward"): 2e-4, (1, "backward"): 3e-4, (0, "forward"): 5e-5, (-1, "update"): 1e-4, (-1, "forward"): 1e-5}
    )


@pytest.mark.mxnet
def test_mxnet_attribution_by_hand() -> None:
    prof = _framework("mxnet")
    # Layer windows from the markers; the backward ops in reverse layer order, matched on the op types.
    ev = [
        {"name": "xf-layer 0 begin", "ph": "i", "ts": 0},
        {"name": "Convolution", "cat": "operator", "ph": "X", "ts": 1, "dur": 50},
        {"name": "Activation", "cat": "operator", "ph": "X", "ts": 60, "dur": 10},
        {"name": "xf-layer 0 end", "ph": "i", "ts": 80},
        {"name": "xf-layer 1 begin", "ph": "i", "ts": 81},
        {"name": "FullyConnected", "cat": "operator", "ph": "B", "ts": 82, "tid": 1},
        {"name": "FullyConnected", "cat": "operator", "ph": "E", "ts": 102, "tid": 1},
        {"name": "xf-layer 1 end", "ph": "i", "ts": 110},
        {"name": "mean", "cat": "operator", "ph": "X", "ts": 120, "dur": 5},
        {"name": "_backward_FullyConnected", "cat": "operator", "ph": "X", "ts": 130, "dur": 30},
        {"name": "_backward_Activation", "cat": "operator", "ph": "X", "ts": 170, "dur": 8},
        {"name": "_backward_Convolution", "cat": "operator", "ph": "X", "ts": 180, "dur": 100},
        {"name": "sgd_update", "cat": "operator", "ph": "X", "ts": 300, "dur": 12},
    ]
    out = prof.attribute_trace(ev, 2, 1)
    assert out == pytest.approx(
        {
            (0, "forward"): 60e-6,
            (1, "forward"): 20e-6,
            (-1, "forward"): 5e-6,
            (1, "backward"): 30e-6,
            (0, "backward"): 108e-6,
            (-1, "update"): 12e-6,
        }
    )


@pytest.mark.parametrize("framework", MARKED)
def test_probes_measure_what_they_say(framework: str) -> None:
    prof = _framework(framework)
    run, windows = prof.pool_callable("cpu")
    run()
    # 3x3 stride-2 max pooling of 2 x 64 planes of 56 x 56: 27 x 27 outputs per plane, 9 window elements each.
    assert windows == 2 * 64 * 27 * 27 * 9
    stream, moved = prof.stream_callable(1 << 16, "cpu")
    stream()
    assert moved in (2 << 16, 3 << 16)  # in place: 2 x bytes (x += 1), 3 x bytes (x += y)
    for kind in ("forward", "backward", "backward_first"):
        prof.conv_callable(kind, 3, 8, 4, "cpu")()
    with pytest.raises(ValueError, match="allowed: forward, backward, backward_first"):
        prof.conv_callable("sideways", 3, 8, 4, "cpu")
    for kind in ("forward", "training"):
        prof.batchnorm_callable(kind, 4, 8, "cpu")()
    with pytest.raises(ValueError, match="allowed: forward, training"):
        prof.batchnorm_callable("inference", 4, 8, "cpu")
    for make in (prof.dispatch_callable, prof.elementwise_callable, prof.transpose_callable, prof.alloc_callable):
        make(64, "cpu")()
    assert prof.threads() >= 1


@pytest.mark.parametrize("framework", MARKED)
def test_calibration_end_to_end_on_small_tables(framework: str, monkeypatch: pytest.MonkeyPatch) -> None:
    _framework(framework)
    from xfbench.benchmarks.harness import peaks as peaks_mod

    monkeypatch.setattr(peaks_mod, "GEMM_GRID", tuple((m, k, n) for m in (1, 64) for k in (16, 64) for n in (16, 64)))
    monkeypatch.setattr(peaks_mod, "COPY_SIZES", (1 << 16, 1 << 20))
    monkeypatch.setattr(peaks_mod, "FAULT_PROBE_BYTES", 1 << 20)
    small = tuple((m, k, n) for m in (16, 64) for k in (27, 144) for n in (8, 16))
    monkeypatch.setattr(peaks_mod, "CONV_GRID", {"forward": small, "backward": small, "backward_first": small})
    peaks, raw = peaks_mod.measure(framework, "cpu", log=lambda line: None)
    assert len(peaks.gemm) == 8 and set(peaks.conv) == {"forward", "backward", "backward_first"}
    assert all(v > 0 for v in (*peaks.gemm.values(), *peaks.bandwidth.values(), *peaks.rates.values()))
    assert set(peaks.step_overhead_s) == {"inference", "training"}
    assert raw["gemm:1x1x1"] > 0
    pred = predict_step(spec_from_dict(TINY), 2, "training", peaks, framework=framework)
    assert pred.total_s > 0


_TIME_WITH_FIXED_PEAKS = """
import sys
sys.path.insert(0, sys.argv[1])
from test_steptime import synthetic_peaks
from xfbench.benchmarks.harness import peaks
from xfbench.benchmarks.cli import main
peaks.measured_peaks = lambda backend, device="cpu", writer=None: synthetic_peaks()
sys.exit(main(sys.argv[2:]))
"""


@pytest.mark.parametrize("framework", MARKED)
def test_time_command_profiles_every_layer(framework: str) -> None:
    import subprocess
    import sys

    from xfbench.reports.paths import subprocess_env

    _framework(framework)
    # A fresh process (MXNet reads its bulk-execution switch once, at its first operation), with fixed peaks and
    # no exact-shape probes (tested apart): the calibration is tested above, this runs the profiler path.
    args = ["time", "lenet", "--backend", framework, "--batch", "4", "--steps", "1", "--json"]
    proc = subprocess.run(
        [sys.executable, "-c", _TIME_WITH_FIXED_PEAKS, str(Path(__file__).parent), *args],
        capture_output=True,
        text=True,
        env={**subprocess_env(), "XFBENCH_EXACT_PROBES": "off"},
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    data = json.loads(proc.stdout[proc.stdout.index("{") :])
    for phase in data["phases"]:
        rows = {(r["layer"], r["phase"]): r for r in phase["layers"]}
        # conv1, pool1, conv2, fc1, fc2, fc3 all run forward ops the profiler sees
        for layer in (0, 1, 2, 5, 6, 7):
            assert (rows[(layer, "forward")]["measured_s"] or 0) > 0, (phase["phase"], layer)
        if phase["phase"] == "training":
            for layer in (2, 5, 6, 7):
                assert (rows[(layer, "backward")]["measured_s"] or 0) > 0, layer
            assert (rows[(-1, "update")]["measured_s"] or 0) > 0
        assert phase["measured_step_s"] > 0
        expected = predict_step(
            spec_from_dict({"name": "x", **_lenet()}), 4, phase["phase"], synthetic_peaks(), framework=framework
        ).total_s
        assert phase["prediction"]["time_predicted_s"] == pytest.approx(expected, rel=1e-12)


def _lenet() -> dict[str, Any]:
    from xfbench.analytics.catalog import resolve_model

    spec = resolve_model("lenet")
    return {"input_shape": list(spec.input_shape), "layers": [layer.to_dict() for layer in spec.layers]}


@pytest.mark.parametrize("framework", MARKED)
def test_layer_probes_run_the_layer_at_its_shape(framework: str) -> None:
    """The exact-shape probes compute the op the key names: output shapes by hand arithmetic (3x3 stride 2 on
    9 x 10 with pads top 1, bottom 1, left 0, right 1: (9 + 2 - 3) // 2 + 1 = 5 by (10 + 1 - 3) // 2 + 1 = 5)."""
    from xfbench.analytics.steptime import parse_probe_key

    prof = _framework(framework)
    _, conv, _ = parse_probe_key("conv:2x3x9x10>4:k3x3:s2x2:p1,1,0,1|forward")
    _, dense, _ = parse_probe_key("dense:3x5>7|forward")
    for kind in ("forward", "backward", "backward_first"):
        y = prof.layer_probe_callable("conv", conv, kind, "cpu")()
        assert tuple(y.shape) == ((2, 5, 5, 4) if framework == "tensorflow" else (2, 4, 5, 5))
        assert tuple(prof.layer_probe_callable("dense", dense, kind, "cpu")().shape) == (3, 7)
        # 2 sequences of 4 steps of 5 features into 6 units: every step's output, or the last step's
        for seqs, shape in ((True, (2, 4, 6)), (False, (2, 6))):
            lstm = {"batch": 2, "steps": 4, "features": 5, "units": 6, "sequences": seqs}
            assert tuple(prof.layer_probe_callable("lstm", lstm, kind, "cpu")().shape) == shape
    with pytest.raises(ValueError, match="allowed: forward, backward, backward_first"):
        prof.layer_probe_callable("conv", conv, "sideways", "cpu")
    with pytest.raises(ValueError, match="allowed: conv, dense, lstm"):
        prof.layer_probe_callable("pool", conv, "forward", "cpu")


@pytest.mark.parametrize("framework", MARKED)
def test_layer_probes_are_timed_in_a_forked_process(framework: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The bench times exact-shape probes in a child of the timing server, not in its own process: with this
    process's ``measure_probes`` made to fail, the probes still come back (the child imports its own copy), each
    key a positive time below the 1 s the 3 x 5 -> 7 dense layer cannot take."""
    _framework(framework)
    from xfbench.benchmarks.harness import peaks as peaks_mod
    from xfbench.benchmarks.harness import timing

    def in_this_process(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("measured in the benchmark process")

    monkeypatch.setattr(peaks_mod, "measure_probes", in_this_process)
    keys = ["dense:3x5>7|forward", "dense:3x5>7|backward"]
    try:
        found, refused = peaks_mod.probes_in_fresh_process(framework, "cpu", keys, 0.0, 1)
    finally:
        timing.close_servers()
    assert set(found) | set(refused) == set(keys)
    assert all(0 < t < 1.0 for t in found.values())


def test_time_phase_both_means_inference_and_training() -> None:
    from xfbench.benchmarks.cli.time import _phases

    assert _phases("both") == ["inference", "training"]
    assert _phases("training,both") == ["training", "inference"]
    assert _phases("inference") == ["inference"]
