"""Step-time prediction (analytics/steptime.py, benchmarks/harness/peaks.py): the roofline arithmetic, the rate tables,
the per-layer aggregation and the cross-machine scaling against hand computation (framework-free)."""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

import pytest
from xfbench.analytics.catalog import resolve_model
from xfbench.analytics.roofline import get_device
from xfbench.analytics.shapes import infer_shapes
from xfbench.analytics.spec import spec_from_dict
from xfbench.analytics.steptime import (
    CONV_GRID,
    CONVENTIONS,
    COPY_SIZES,
    FRESH_THRESHOLD,
    GEMM_GRID,
    MachinePeaks,
    calibrated_step_overhead,
    cross_machine,
    datasheet_peaks,
    interpolate_rate,
    layer_work,
    median_abs,
    peaks_from_rows,
    peaks_to_rows,
    predict_step,
    rel_error,
    work_time,
)

TINY = {"name": "tiny", "input_shape": [3], "layers": [{"type": "Dense", "units": 4}]}


def flat(rate: float = 1e9, bw: float = 1e9, op: float = 1e-5, **extra: Any) -> MachinePeaks:
    """One GEMM rate and one bandwidth for every shape and size."""
    return MachinePeaks("flat", "measured-peaks", {(1, 1, 1): rate}, {1: bw}, op, **extra)


def test_dense_inference_by_hand() -> None:
    # Dense(4) on 3 features, batch 2, PyTorch (bias inside addmm, no activation): one GEMM (2 x 3) @ (3 x 4).
    # compute 2*2*3*4 = 48 FLOPs / 1e9 = 48 ns; traffic: A 6 + B 12 + C 8 elements = 104 bytes, plus the new
    # output's read for ownership 32 bytes = 136 bytes / 1e9 = 136 ns: memory-bound; one op 10 us.
    # Step: 10.136 us + the inference step overhead 100 us.
    peaks = flat(step_overhead_s={"inference": 1e-4, "training": 2e-4})
    pred = predict_step(spec_from_dict(TINY), 2, "inference", peaks, framework="torch")
    assert len(pred.items) == 1
    assert pred.items[0].bound == "overhead"
    assert pred.items[0].seconds == pytest.approx(10e-6 + 136e-9, rel=1e-12)
    assert pred.total_s == pytest.approx(1e-4 + 10e-6 + 136e-9, rel=1e-12)


def test_dense_training_by_hand() -> None:
    # As above, training with SGD. Items (the first layer with weights has no input gradient):
    #   forward GEMM                          136 ns + 1 op
    #   weight gradient (3 x 2) @ (2 x 4):    A 6 + B 8 + C 12 elements = 104 B, + 48 B for ownership:
    #                                         152 ns + 1 op
    #   bias gradient: reads 8 outputs        32 ns + 1 op
    #   SGD update of 16 parameters in place: 3 streams x 16 x 4 B = 192 ns + 2 ops (weight, bias)
    #   loss on 8 logits: 4 passes x 32 B     128 ns + loss_ops ops
    ops = 1 + 1 + 1 + 2 + CONVENTIONS["torch"].loss_ops
    expected_items = (136 + 152 + 32 + 192 + 128) * 1e-9 + ops * 1e-5
    peaks = flat(step_overhead_s={"inference": 1e-4, "training": 2e-4})
    pred = predict_step(spec_from_dict(TINY), 2, "training", peaks, framework="torch")
    assert sum(t.seconds for t in pred.items) == pytest.approx(expected_items, rel=1e-12)
    assert pred.total_s == pytest.approx(expected_items + 2e-4, rel=1e-12)
    by = pred.by_layer_phase()
    assert by[(0, "forward")] == pytest.approx(136e-9 + 1e-5, rel=1e-12)
    assert by[(0, "weight_grad")] == pytest.approx(152e-9 + 32e-9 + 2e-5, rel=1e-12)
    assert by[(0, "update")] == pytest.approx(192e-9 + 2e-5, rel=1e-12)
    assert (0, "input_grad") not in by
    # The per-layer aggregation adds up to the items, and the phase totals to the same.
    assert sum(by.values()) == pytest.approx(expected_items, rel=1e-12)
    assert sum(pred.by_phase().values()) == pytest.approx(expected_items, rel=1e-12)


def test_update_traffic_per_optimizer_by_hand() -> None:
    # 16 parameters (64 B a stream): SGD reads p, g and writes p (3 streams), momentum 5, Adam 7, in place (no
    # ownership reads). PyTorch's Adam also makes 2 temporaries (sqrt(v), its quotient): each written (64 B + 64 B
    # for ownership) and read (64 B): 192 B. At 1 B/ns: 192, 320 and 448 + 384 = 832 ns.
    for optimizer, nanoseconds in (("sgd", 192), ("momentum", 320), ("adam", 832)):
        pred = predict_step(spec_from_dict(TINY), 2, "training", flat(op=0.0), framework="torch", optimizer=optimizer)
        assert pred.by_layer_phase()[(0, "update")] == pytest.approx(nanoseconds * 1e-9, rel=1e-12)


def test_interpolation_is_log_linear() -> None:
    # Rate 1e9 * m * k over m, k in {1, 4}, any n: log(1/rate) is linear in log m and log k, so the multilinear
    # interpolation is exact inside the box: (2, 2) -> 4e9; outside it is clamped to the face.
    table = {(m, k, n): 1e9 * m * k for m in (1, 4) for k in (1, 4) for n in (1, 4)}
    assert interpolate_rate(table, 2, 2, 3) == pytest.approx(4e9, rel=1e-12)
    assert interpolate_rate(table, 1, 4, 1) == pytest.approx(4e9, rel=1e-12)
    assert interpolate_rate(table, 64, 1, 1) == pytest.approx(4e9, rel=1e-12)  # m clamped to 4
    assert interpolate_rate(table, 2, 1, 1) == pytest.approx(2e9, rel=1e-12)  # geometric middle of 1e9, 4e9
    assert interpolate_rate({(1, 1, 1): 5.0}, 100, 100, 100) == 5.0
    with pytest.raises(ValueError, match="lacks the point"):
        interpolate_rate({(1, 1, 1): 1.0, (4, 1, 1): 1.0, (1, 4, 1): 1.0}, 2, 2, 1)


def test_bandwidth_interpolates_between_working_sets() -> None:
    peaks = MachinePeaks("bw", "measured-peaks", {(1, 1, 1): 1e9}, {1 << 18: 4e10, 1 << 26: 1e10}, 0.0)
    assert peaks.bw(1 << 22) == pytest.approx(2e10, rel=1e-12)  # geometric middle of the sizes and rates
    assert peaks.bw(10) == pytest.approx(4e10, rel=1e-12)
    assert peaks.bw(1 << 30) == pytest.approx(1e10, rel=1e-12)


def test_convolution_priced_from_the_conv_table_by_hand() -> None:
    # Conv2D 3 -> 4, 3x3, padding 1 on 8x8, batch 2: im2col GEMM M = 2*8*8 = 128, K = 27, N = 4,
    # 2*128*27*4 = 27648 FLOPs. Forward at 2e9 -> 13.824 us; a first layer's weight gradient at 5e8 -> 55.296 us.
    # Without a conv table both use the GEMM rate 1e9: 27.648 us each. Bandwidth is made unlimited.
    spec = spec_from_dict(
        {"input_shape": [3, 8, 8], "layers": [{"type": "Conv2D", "filters": 4, "kernel": 3, "padding": 1}]}
    )
    conv = {"forward": {(1, 1, 1): 2e9}, "backward_first": {(1, 1, 1): 5e8}}
    pred = predict_step(spec, 2, "training", flat(bw=1e18, op=0.0, conv=conv), framework="torch")
    by = pred.by_layer_phase()
    assert by[(0, "forward")] == pytest.approx(13.824e-6, rel=1e-9)
    assert by[(0, "weight_grad")] == pytest.approx(55.296e-6, rel=1e-6)
    plain = predict_step(spec, 2, "training", flat(bw=1e18, op=0.0), framework="torch").by_layer_phase()
    assert plain[(0, "forward")] == pytest.approx(27.648e-6, rel=1e-9)
    assert plain[(0, "weight_grad")] == pytest.approx(27.648e-6, rel=1e-6)
    kernels = {w.work.kernel for w in pred.items if w.work.gemm}
    assert kernels == {"forward", "backward_first"}  # no input gradient for the first layer


def test_page_faults_of_a_fresh_allocation_by_hand() -> None:
    # Dense 4096 -> 4096 at batch 1: the weight gradient is a new 64 MiB tensor (> 32 MiB): with PyTorch (every
    # output a new malloc) it page-faults, 67108864 B / 1e9 B/s = 67.108864 ms; MXNet's static memory plan does not.
    spec = spec_from_dict({"input_shape": [4096], "layers": [{"type": "Dense", "units": 4096}]})
    peaks = flat(rate=1e18, bw=1e18, op=0.0, fault_bw=1e9)
    torch_dw = predict_step(spec, 1, "training", peaks, framework="torch").by_layer_phase()[(0, "weight_grad")]
    mx_dw = predict_step(spec, 1, "training", peaks, framework="mxnet").by_layer_phase()[(0, "weight_grad")]
    assert 4096 * 4096 * 4 > FRESH_THRESHOLD
    assert torch_dw == pytest.approx(67.108864e-3, rel=1e-6)
    assert mx_dw < 1e-6


def test_tensorflow_layout_ops_by_hand() -> None:
    # Keras runs NHWC: a transpose of the (2, 3, 8, 8) input before the first conv (2 x 384 elements x 4 B read and
    # written + 1536 B read for ownership = 4608 B) and of the image output back; an int padding is its own op.
    spec = spec_from_dict(
        {"input_shape": [3, 8, 8], "layers": [{"type": "Conv2D", "filters": 4, "kernel": 3, "padding": 1}]}
    )
    tf_items = {(w.layer, w.what): w for w in layer_work(spec, 2, "inference", framework="tensorflow")}
    assert tf_items[(0, "to NHWC")].bytes + tf_items[(0, "to NHWC")].written == 2 * 384 * 4 + 384 * 4
    assert (0, "pad") in tf_items and (-1, "to NCHW") in tf_items
    torch_items = {(w.layer, w.what) for w in layer_work(spec, 2, "inference", framework="torch")}
    assert not any(what in ("to NHWC", "pad", "to NCHW") for _, what in torch_items)


def test_lstm_conventions() -> None:
    # T=40 steps, 60 features, 128 units, batch 16. PyTorch and MXNet run oneDNN's fused RNN: one input GEMM for
    # all steps (640 x 60 x 512) and a recurrent GEMM per step with no op of its own; Keras runs a While loop:
    # two GEMMs and their ops per step.
    spec = resolve_model("lstm")
    torch_w = [w for w in layer_work(spec, 16, "inference", framework="torch") if w.layer == 0 and w.gemm]
    assert [(w.gemm, w.repeat) for w in torch_w] == [((640, 60, 512), 1), ((16, 128, 512), 40)]
    assert torch_w[1].ops == 0
    tf_w = [w for w in layer_work(spec, 16, "inference", framework="tensorflow") if w.layer == 0 and w.gemm]
    assert [(w.gemm, w.repeat, w.ops) for w in tf_w] == [((16, 60, 512), 40, 40), ((16, 128, 512), 40, 40)]


def test_cross_machine_scaling_by_hand() -> None:
    # A target machine twice as fast in every figure (rates, bandwidth, faults) with half the overheads predicts
    # every work item, and so the step, in exactly half the time: 300 ms measured there -> 150 ms here.
    source = synthetic_peaks()
    target = replace(
        source,
        gemm={k: 2 * v for k, v in source.gemm.items()},
        bandwidth={k: 2 * v for k, v in source.bandwidth.items()},
        conv={kern: {k: 2 * v for k, v in t.items()} for kern, t in source.conv.items()},
        rates={k: 2 * v for k, v in source.rates.items()},
        fault_bw=2 * (source.fault_bw or 0),
        op_overhead_s=source.op_overhead_s / 2,
        step_overhead_s={k: v / 2 for k, v in source.step_overhead_s.items()},
    )
    spec = resolve_model("alexnet")
    p_src = predict_step(spec, 2, "training", source, framework="torch")
    p_dst = predict_step(spec, 2, "training", target, framework="torch")
    assert p_dst.total_s == pytest.approx(p_src.total_s / 2, rel=1e-9)
    assert cross_machine(0.3, p_src, p_dst) == pytest.approx(0.15, rel=1e-9)
    with pytest.raises(ValueError):
        cross_machine(0.0, p_src, p_dst)


def synthetic_peaks() -> MachinePeaks:
    """Full tables with rates that vary by shape (a slow small GEMM, a fast large one)."""
    gemm = {(m, k, n): 1e8 * (m * k * n) ** (1 / 6) for m, k, n in GEMM_GRID}
    conv = {kern: {s: 5e8 * (s[0] * s[1] * s[2]) ** (1 / 6) for s in grid} for kern, grid in CONV_GRID.items()}
    return MachinePeaks(
        "synthetic",
        "measured-peaks",
        gemm,
        {size: 3e10 / (1 + i) for i, size in enumerate(COPY_SIZES)},
        6e-6,
        {"inference": 5e-5, "training": 4e-4},
        rates={"elementwise": 1e9, "pool": 3e8, "transpose": 4e8},
        threads=2,
        fault_bw=1.5e9,
        conv=conv,
    )


def test_peaks_round_trip_through_a_report(tmp_path: Any) -> None:
    from xfbench.reports.writer import RunWriter, read_report

    peaks = synthetic_peaks()
    with RunWriter(tmp_path) as writer:
        for row in peaks_to_rows(peaks, "torch", "cpu"):
            writer.write_row(row)
        path = writer.path
    df = read_report(path)
    rows = df.astype(object).where(df.notna(), None).to_dict(orient="records")
    back = peaks_from_rows(rows, "torch", "cpu")
    assert back.threads == 2
    spec = resolve_model("vgg11")
    for phase in ("inference", "training"):
        a = predict_step(spec, 1, phase, peaks, framework="torch").total_s
        b = predict_step(spec, 1, phase, back, framework="torch").total_s
        assert b == pytest.approx(a, rel=1e-12)
    with pytest.raises(ValueError, match="no step-time calibration for mxnet on cpu"):
        peaks_from_rows(rows, "mxnet", "cpu")


def test_datasheet_peaks_are_labelled() -> None:
    peaks = datasheet_peaks(get_device("h100"))
    assert peaks.basis == "datasheet:h100" and "datasheet-based" in peaks.label
    # Dense(4) on 3 features, batch 2: traffic 136 B / 3.35e12 B/s vs 48 FLOPs / 67e12: memory-bound, + one
    # 5 us launch.
    pred = predict_step(spec_from_dict(TINY), 2, "inference", peaks, framework="torch")
    assert pred.total_s == pytest.approx(136 / 3.35e12 + 5e-6, rel=1e-12)


def test_calibrated_step_overhead_and_errors_by_hand() -> None:
    pred = predict_step(spec_from_dict(TINY), 2, "inference", flat(), framework="torch")
    assert calibrated_step_overhead(50e-6, pred) == pytest.approx(50e-6 - 10.136e-6, rel=1e-12)
    assert calibrated_step_overhead(1e-6, pred) == 0.0
    assert rel_error(0.12, 0.1) == pytest.approx(0.2)
    assert median_abs([-0.3, 0.1, 0.2]) == pytest.approx(0.2)
    assert median_abs([-0.3, 0.1]) == pytest.approx(0.2)
    assert median_abs([]) is None


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"phase": "eval"}, "unknown phase 'eval'; allowed: inference, training"),
        ({"optimizer": "lbfgs"}, "unknown optimizer 'lbfgs'; allowed: sgd, momentum, adam"),
        ({"batch_size": 0}, "batch size must be a positive integer"),
        ({"framework": "jax"}, "unknown framework 'jax'"),
    ],
)
def test_bad_arguments_name_what_is_allowed(kwargs: dict[str, Any], match: str) -> None:
    args = {"batch_size": 1, "phase": "training", "framework": "torch", "optimizer": "sgd", **kwargs}
    with pytest.raises(ValueError, match=match):
        layer_work(
            spec_from_dict(TINY), args["batch_size"], args["phase"], "float32", args["framework"], args["optimizer"]
        )


def test_bad_peaks_are_refused() -> None:
    with pytest.raises(ValueError):
        MachinePeaks("x", "measured-peaks", {(1, 1, 1): 0.0}, {1: 1.0}, 0.0)
    with pytest.raises(ValueError):
        MachinePeaks("x", "measured-peaks", {}, {1: 1.0}, 0.0)
    with pytest.raises(ValueError):
        MachinePeaks("x", "measured-peaks", {(1, 1, 1): 1.0}, {1: 1.0}, -1.0)


def test_every_catalog_model_predicts_fast_and_finite() -> None:
    import time

    from xfbench.analytics.catalog import CATALOG

    peaks = synthetic_peaks()
    for name in CATALOG:
        spec = resolve_model(name)
        for fw in ("torch", "tensorflow", "mxnet"):
            for phase in ("inference", "training"):
                start = time.perf_counter()
                pred = predict_step(spec, 2, phase, peaks, framework=fw)
                assert time.perf_counter() - start < 1.0  # the budget per model
                assert math.isfinite(pred.total_s) and pred.total_s > 0
                assert {t.work.layer for t in pred.items} <= set(range(-1, len(spec.layers)))


# --- benchmarks/harness/peaks.py: the calibration arithmetic ---------------------------------------------------


def test_proxy_shape_by_hand() -> None:
    from xfbench.benchmarks.harness.peaks import proxy_shape

    # 2*4096*8192*4096 = 2.7e11 FLOPs > 1.2e9: halve the largest dimension (the first of equals) each time:
    # k 8192->4096, m->2048, k->2048, n->2048, m->1024, k->1024, n->1024, m->512: 2*512*1024*1024 = 1.07e9.
    assert proxy_shape(4096, 8192, 4096) == (512, 1024, 1024)
    assert proxy_shape(1, 8192, 4096) == (1, 8192, 4096)  # 6.7e7 FLOPs: timed as is
    assert proxy_shape(4096, 16, 4096) == (4096, 16, 4096)  # 5.4e8 FLOPs


def test_gemm_rates_by_hand() -> None:
    from xfbench.benchmarks.harness.peaks import gemm_rates, proxy_shape

    # Every product takes its dispatch (100 us) plus FLOPs / 1e10: the net rate is 1e10 wherever the net time
    # is above 5% of the total; a tiny product is floored there (16x16x16: 8192 FLOPs / (0.05 x 100.8 us)).
    call = 1e-4
    raw = {}
    for m, k, n in GEMM_GRID:
        pm, pk, pn = proxy_shape(m, k, n)
        raw[f"gemm:{m}x{k}x{n}"] = call + 2 * pm * pk * pn / 1e10
    rates = gemm_rates(raw, call, None)
    assert rates[(4096, 1024, 1024)] == pytest.approx(1e10, rel=1e-9)
    assert rates[(16, 16, 16)] == pytest.approx(8192 / (0.05 * (1e-4 + 8192 / 1e10)), rel=1e-9)
    assert max(rates.values()) == pytest.approx(1e10, rel=1e-9)  # nothing above the large products' rate


def test_conv_probe_side_by_hand() -> None:
    from xfbench.benchmarks.harness.peaks import conv_probe_side

    # 2*56^2*2304*512 = 7.4e9 FLOPs > 2e9 -> 28 (1.85e9); small classes keep their side.
    assert conv_probe_side(3136, 2304, 512) == 28
    assert conv_probe_side(3136, 27, 32) == 56
    assert conv_probe_side(196, 2304, 512) == 14


class _Writer:
    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []

    def write_row(self, row: dict[str, Any]) -> None:
        self.rows.append(row)


def test_time_prediction_columns(monkeypatch: pytest.MonkeyPatch) -> None:
    from xfbench.benchmarks.harness import peaks as peaks_mod
    from xfbench.benchmarks.harness.workload import Config

    peaks = synthetic_peaks()
    monkeypatch.setattr(peaks_mod, "_cached", lambda backend, device: (peaks, (("gemm:1x1x1", 1e-5),)))
    monkeypatch.setenv("XFBENCH_EXACT_PROBES", "off")  # the tables alone (the probes need the framework)
    writer = _Writer()
    cfg = Config("torch", "mlp", "training", 64)
    expected = predict_step(resolve_model("mlp"), 64, "training", peaks, framework="torch").total_s
    cols = peaks_mod.time_prediction_columns(cfg, {"time_median_s": 2 * expected}, writer)
    assert cols["time_predicted_s"] == pytest.approx(expected, rel=1e-12)
    assert cols["time_rel_error"] == pytest.approx(-0.5, rel=1e-12)
    assert cols["prediction_basis"] == "measured-peaks"
    calibration = len(writer.rows)
    assert calibration == len(peaks_to_rows(peaks, "torch", "cpu"))
    assert all(r["kind"] == "calibration" for r in writer.rows)
    peaks_mod.time_prediction_columns(cfg, {"time_median_s": expected}, writer)
    assert len(writer.rows) == calibration  # once per writer, backend and device

    def broken(backend: str, device: str) -> Any:
        raise RuntimeError("no probe")

    # exact-shape probes that fail: the tables price the layers, and the message says so
    monkeypatch.setenv("XFBENCH_EXACT_PROBES", "on")

    def no_probes(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("probe broke")

    monkeypatch.setattr(peaks_mod, "with_exact_probes", no_probes)
    cols = peaks_mod.time_prediction_columns(cfg, {"time_median_s": 2 * expected}, _Writer())
    assert cols["time_predicted_s"] == pytest.approx(expected, rel=1e-12)
    assert "exact-shape probes failed (RuntimeError: probe broke)" in cols["message"]

    monkeypatch.setattr(peaks_mod, "_cached", broken)
    cols = peaks_mod.time_prediction_columns(cfg, {"time_median_s": 1.0, "message": "noisy"}, _Writer())
    assert cols == {"message": "noisy; time prediction failed: RuntimeError: no probe"}


def test_probes_in_fresh_process_routing(monkeypatch: pytest.MonkeyPatch) -> None:
    """Where no fork is safe (a GPU) the probes are timed in this process; where the forked probe process fails,
    too (and said on stderr); otherwise the timing server's answer is what comes back."""
    from xfbench.benchmarks.harness import peaks as peaks_mod
    from xfbench.benchmarks.harness import timing

    here: list[str] = []

    def in_process(backend: str, device: str, keys: list[str], call_s: float, threads: Any) -> Any:
        here.append(device)
        return {k: 1.0 for k in keys}, {}

    class Server:
        def __init__(self, reply: dict[str, Any]) -> None:
            self.reply, self.requests = reply, []

        def request(self, payload: dict[str, Any], timeout_s: float) -> dict[str, Any]:
            self.requests.append(payload)
            return self.reply

    monkeypatch.setattr(peaks_mod, "measure_probes", in_process)
    keys = ["dense:3x5>7|forward"]
    assert peaks_mod.probes_in_fresh_process("torch", "gpu:0", keys, 0.0, 1) == ({keys[0]: 1.0}, {})
    assert here == ["gpu:0"]
    served = Server({"status": "ok", "found": {keys[0]: 2.5e-6}, "refused": {}})
    monkeypatch.setattr(timing, "_SERVERS", {"torch": served})
    assert peaks_mod.probes_in_fresh_process("torch", "cpu", keys, 1e-6, 2) == ({keys[0]: 2.5e-6}, {})
    assert served.requests == [
        {"probes": keys, "backend": "torch", "device": "cpu", "call_s": 1e-6, "threads": 2}
    ] and here == ["gpu:0"]
    monkeypatch.setattr(timing, "_SERVERS", {"torch": Server({"status": "error", "message": "boom"})})
    assert peaks_mod.probes_in_fresh_process("torch", "cpu", keys, 0.0, 1) == ({keys[0]: 1.0}, {})
    assert here == ["gpu:0", "cpu"]


def test_transformer_kernels_priced_at_their_own_rates() -> None:
    # gpt2_tiny training under PyTorch: LayerNorm, attention's softmax and the GELU carry their elements at their
    # own rate names. With the bandwidth and dispatch free (1e15 B/s, no op cost), an item's time is its compute:
    # elements / rate. Without those rates (a calibration kept before they were timed) the forward softmax and GELU
    # fall back to the sigmoid's rate, as before, and the LayerNorm and the backward passes are bandwidth alone.
    spec = resolve_model("gpt2_tiny")
    items = layer_work(spec, 2, "training", framework="torch")
    by_rate: dict[str, list[Any]] = {}
    for w in items:
        by_rate.setdefault(w.rate, []).append(w)
    assert {w.what for w in by_rate["layernorm"]} == {"layernorm", "layernorm grad"}
    assert {w.what for w in by_rate["softmax"]} == {"softmax", "softmax grad"}
    gelu = [w for w in items if w.what.startswith("gelu")]
    assert gelu and all(w.rate == w.what.split(" ")[0] and w.elements > 0 for w in gelu)
    for w in by_rate["layernorm"]:
        layer = spec.layers[w.layer]  # a LayerNorm keeps its input's shape: elements = batch x T x features
        assert layer.type == "LayerNorm"
        assert w.elements == 2 * math.prod(infer_shapes(spec)[w.layer])
    old = flat(bw=1e15, op=0.0, rates={"elementwise": 1e9})
    new = flat(
        bw=1e15, op=0.0, rates={"elementwise": 1e9, "softmax": 1e8, "layernorm": 2e8, "gelu": 4e8, "gelu_tanh": 5e7}
    )
    for w in by_rate["layernorm"] + by_rate["softmax"] + gelu:
        forward = w.phase == "forward"
        assert work_time(w, new).compute_s == pytest.approx(w.elements / new.rates[w.rate], rel=1e-12)
        fallback = w.elements / 1e9 if forward and w.rate != "layernorm" else 0.0
        assert work_time(w, old).compute_s == pytest.approx(fallback, rel=1e-12)


# --- exact-shape layer probes (issue 20: layers priced from the framework's own op at their shape) ----------------

STRIDED = {
    "input_shape": [3, 9, 10],
    "layers": [
        {"type": "Conv2D", "filters": 4, "kernel": 3, "stride": 2, "padding": "same"},
        {"type": "Conv2D", "filters": 5, "kernel": 1, "padding": "valid"},
    ],
}


def test_probe_keys_name_each_layer_op_at_its_shape() -> None:
    from xfbench.analytics.steptime import parse_probe_key, probe_key, probe_keys

    keys = probe_keys(spec_from_dict(STRIDED), 2, "training", framework="torch")
    # same padding, stride 2, 3x3 on 9 x 10: outputs ceil(9/2) = 5, ceil(10/2) = 5; total pads (5-1)*2+3-9 = 2 and
    # (5-1)*2+3-10 = 1, the odd one at the end (TensorFlow's rule, the spec's): top 1, bottom 1, left 0, right 1
    assert keys == [
        "conv:2x3x9x10>4:k3x3:s2x2:p1,1,0,1|forward",
        "conv:2x3x9x10>4:k3x3:s2x2:p1,1,0,1|backward_first",
        "conv:2x4x5x5>5:k1x1:s1x1:p0,0,0,0|forward",
        "conv:2x4x5x5>5:k1x1:s1x1:p0,0,0,0|backward",
    ]
    for key in keys:
        assert probe_key(*parse_probe_key(key)) == key
    assert probe_keys(spec_from_dict(STRIDED), 2, "inference", framework="torch") == [keys[0], keys[2]]
    with pytest.raises(ValueError, match="malformed probe key"):
        parse_probe_key("conv:2x3|forward")
    with pytest.raises(ValueError, match="unknown kind 'sideways'"):
        parse_probe_key("dense:1x2>3|sideways")


def test_a_probed_layer_costs_its_probe_time() -> None:
    spec = spec_from_dict(STRIDED)
    base = synthetic_peaks()
    exact = {
        "conv:2x3x9x10>4:k3x3:s2x2:p1,1,0,1|forward": 0.010,
        "conv:2x3x9x10>4:k3x3:s2x2:p1,1,0,1|backward_first": 0.004,
        "conv:2x4x5x5>5:k1x1:s1x1:p0,0,0,0|backward": 0.030,
    }
    probed = predict_step(spec, 2, "training", replace(base, exact=exact), framework="torch")
    plain = predict_step(spec, 2, "training", base, framework="torch")
    op = base.op_overhead_s
    by = {(t.work.layer, t.work.what.split(" gemm")[0]): t.seconds for t in probed.items if t.work.gemm}
    # torch: one op per convolution GEMM, its dX and dW in one backward op (the dX item carries 0 ops)
    assert by[(0, "conv")] == pytest.approx(0.010 + op)
    assert by[(0, "conv dW")] == pytest.approx(0.004 + op)  # a first layer: the weight gradient alone
    assert by[(1, "conv dX")] == pytest.approx(0.015)  # half the backward probe each
    assert by[(1, "conv dW")] == pytest.approx(0.015 + op)
    # the second layer's forward was not probed: priced from the tables as before
    plain_by = {(t.work.layer, t.work.what.split(" gemm")[0]): t.seconds for t in plain.items if t.work.gemm}
    assert by[(1, "conv")] == pytest.approx(plain_by[(1, "conv")])
    assert by[(0, "conv")] != pytest.approx(plain_by[(0, "conv")])


def test_probe_batches_are_cut_to_the_flop_cap() -> None:
    from xfbench.benchmarks.harness.peaks import probe_flops, probe_timed_dims

    dims = {
        "batch": 8,
        "channels": 100,
        "height": 100,
        "width": 150,
        "filters": 200,
        "kernel": (3, 3),
        "stride": (2, 2),
        "pads": (0, 1, 0, 1),
    }
    # outputs (100 + 1 - 3) // 2 + 1 = 50 by (150 + 1 - 3) // 2 + 1 = 75; 2 x 50 x 75 x 100 x 9 x 200 FLOPs a sample
    per_sample = 2 * 50 * 75 * 100 * 9 * 200
    assert probe_flops("conv", dims) == 8 * per_sample
    timed, scale = probe_timed_dims("conv", dims, cap=3 * per_sample + 1)
    assert (timed["batch"], scale) == (3, 8 / 3)
    assert probe_timed_dims("conv", dims, cap=1.0)[0]["batch"] == 1  # never below one sample
    timed, scale = probe_timed_dims("dense", {"rows": 64, "features": 1000, "units": 500}, cap=2 * 1000 * 500 * 16)
    assert (timed["rows"], scale) == (16, 4.0)


def test_a_probed_lstm_costs_its_probe_time_once() -> None:
    # the whole LSTM layer is one probe: the forward phase costs the forward probe plus one dispatch, the backward
    # phases (cell gradient, dh, dX, dW) together the backward probe (and at most one dispatch), whatever the
    # per-step items would have cost
    spec = spec_from_dict({"input_shape": [5, 3], "layers": [{"type": "LSTM", "units": 4}]})
    base = synthetic_peaks()
    exact = {"lstm:2x5x3>4:r0|forward": 0.002, "lstm:2x5x3>4:r0|backward_first": 0.006}  # a first layer
    for framework in ("torch", "tensorflow", "mxnet"):
        pred = predict_step(spec, 2, "training", replace(base, exact=exact), framework=framework)
        by = pred.by_layer_phase()
        assert by[(0, "forward")] == pytest.approx(0.002 + base.op_overhead_s), framework
        backward = by[(0, "input_grad")] + by[(0, "weight_grad")]
        assert 0.006 - 1e-12 <= backward <= 0.006 + base.op_overhead_s + 1e-12, framework  # one dispatch at most


def test_per_layer_overhead_from_a_deep_probe() -> None:
    from xfbench.analytics.steptime import layer_and_step_overhead

    # residuals 100 us (1 layer) and 260 us (9 layers): 160 us over 8 extra layers = 20 us a layer; the step's own
    # 100 - 20 = 80 us
    per_layer, step = layer_and_step_overhead(100e-6, 260e-6, 8)
    assert (per_layer, step) == (pytest.approx(20e-6), pytest.approx(80e-6))
    assert layer_and_step_overhead(100e-6, 90e-6, 8) == (0.0, pytest.approx(100e-6))  # never negative
    # a prediction carries it once per spec layer, in the layer's forward
    spec = spec_from_dict(STRIDED)
    base = synthetic_peaks()
    with_layers = replace(base, layer_overhead_s={"inference": 30e-6, "training": 50e-6})
    for phase, per in (("inference", 30e-6), ("training", 50e-6)):
        a = predict_step(spec, 2, phase, base, framework="tensorflow")
        b = predict_step(spec, 2, phase, with_layers, framework="tensorflow")
        assert b.total_s - a.total_s == pytest.approx(2 * per)  # two layers
        assert b.by_layer_phase()[(1, "forward")] - a.by_layer_phase()[(1, "forward")] == pytest.approx(per)


def test_per_layer_overhead_round_trips_through_a_report(tmp_path: Any) -> None:
    from xfbench.reports.writer import RunWriter, read_report

    peaks = replace(synthetic_peaks(), layer_overhead_s={"inference": 30e-6, "training": 50e-6})
    with RunWriter(tmp_path) as writer:
        for row in peaks_to_rows(peaks, "torch", "cpu"):
            writer.write_row(row)
        path = writer.path
    df = read_report(path)
    back = peaks_from_rows(df.astype(object).where(df.notna(), None).to_dict(orient="records"), "torch", "cpu")
    assert back.layer_overhead_s == pytest.approx({"inference": 30e-6, "training": 50e-6})
