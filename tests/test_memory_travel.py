"""Issue 20 item 4: the process-level memory rules that read the run (ISA, oneDNN switches, batch-matched probes).

Expected values are hand arithmetic (shown beside each) or a second source named at the assertion; no expected
value is computed by the code under test. Nothing here imports a deep-learning framework.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from xfbench.analytics.memory import mxnet_onednn_layout_bytes, mxnet_onednn_rnn_bytes
from xfbench.analytics.spec import spec_from_dict
from xfbench.analytics.timeline_rules import (
    MXNET_PLAN_MATCH_RANGE,
    mxnet_onednn_layout_elems,
    mxnet_plan_bytes,
    onednn_channel_block,
)
from xfbench.benchmarks.harness import rows

# ----------------------------------------------------------------------------- oneDNN's channel block per ISA


@pytest.mark.parametrize(
    ("isa", "block"),
    [("avx512", 16), ("avx512_core", 16), ("AVX512_CORE_AMX", 16), ("avx2", 8), ("AVX2", 8), ("avx", 8), ("sse41", 8)],
)
def test_onednn_block_follows_the_isa(isa: str, block: int) -> None:
    # oneDNN's blocked layouts: nChw16c on AVX-512, nChw8c on AVX2 and below (DNNL_VERBOSE: aBcd16b / aBcd8b)
    assert onednn_channel_block(isa) == block


# ----------------------------------------------------------------------------- MXNet's static memory plan


def test_plan_reuses_a_freed_larger_buffer() -> None:
    # a 100, b 50; a freed; c 80 takes a's 100 (the smallest free >= 80): storage 100 + 50
    reqs = [("alloc", "a", 100), ("alloc", "b", 50), ("free", "a", 0), ("alloc", "c", 80)]
    assert mxnet_plan_bytes(reqs) == 150


def test_plan_grows_a_smaller_free_buffer() -> None:
    # a 100 freed; b 150: no free entry >= 150, the largest smaller one within 150 // 16 grows to 150
    reqs = [("alloc", "a", 100), ("free", "a", 0), ("alloc", "b", 150)]
    assert mxnet_plan_bytes(reqs) == 150


def test_plan_match_range_keeps_far_sizes_apart() -> None:
    assert MXNET_PLAN_MATCH_RANGE == 16  # NNVM_EXEC_MATCH_RANGE's default (src/nnvm/plan_memory.cc)
    # the window is around the request: [s // 16, s * 16]
    # a 100 freed; b 1700: 100 < 1700 // 16 = 106, a new entry (100 + 1700); c 7: 100 <= 7 * 16 = 112, reuses a
    reqs = [("alloc", "a", 100), ("free", "a", 0), ("alloc", "b", 1700), ("alloc", "c", 7)]
    assert mxnet_plan_bytes(reqs) == 1800
    reqs = [("alloc", "a", 100), ("free", "a", 0), ("alloc", "c", 6)]  # 100 > 6 * 16 = 96: a new entry
    assert mxnet_plan_bytes(reqs) == 106


def test_plan_prefers_the_smallest_sufficient_buffer() -> None:
    # free 400 and 120; d 100 takes 120 (smallest >= 100); e 300 then takes 400: storage 400 + 120
    reqs = [("alloc", "a", 400), ("alloc", "b", 120), ("free", "a", 0), ("free", "b", 0)]
    reqs += [("alloc", "d", 100), ("alloc", "e", 300)]
    assert mxnet_plan_bytes(reqs) == 520


# ----------------------------------------------------------------------------- oneDNN layout copies (MXNet)


def test_layout_elems_by_hand() -> None:
    # conv 24 -> 40 channels, 3x3, input 10x10 (hw 100), batch 2
    # AVX-512 (block 16): weight 48 * 32 * 9 = 13,824; training adds 1.5 * (2 * 32 * 100) = 9,600
    assert mxnet_onednn_layout_elems(2, (24, 100), 40, (3, 3), False, 16) == 13_824
    assert mxnet_onednn_layout_elems(2, (24, 100), 40, (3, 3), True, 16) == 13_824 + 9_600
    # AVX2 (block 8): weight 40 * 24 * 9 = 8,640; input 1.5 * (2 * 24 * 100) = 7,200
    assert mxnet_onednn_layout_elems(2, (24, 100), 40, (3, 3), True, 8) == 8_640 + 7_200
    # a 3-channel input is read plain: weight 48 * 3 * 9 = 1,296, input 1.5 * 2 * 3 * 100 = 900
    assert mxnet_onednn_layout_elems(2, (3, 100), 40, (3, 3), True, 16) == 1_296 + 900


def test_layout_bytes_over_a_spec() -> None:
    spec = spec_from_dict(
        {
            "name": "two-conv",
            "input_shape": [3, 8, 8],
            "layers": [
                {"type": "Conv2D", "filters": 20, "kernel": 3, "padding": "same", "activation": "relu"},
                {"type": "Conv2D", "filters": 8, "kernel": 1, "padding": "valid"},
                {"type": "Flatten"},
                {"type": "Dense", "units": 2},
            ],
        }
    )
    # block 16, batch 4, float32. conv1: 3 -> 20, 3x3: weight 32 * 3 * 9 = 864; input 4 * 3 * 64 = 768 -> 1,152
    # conv2: 20 -> 8, 1x1: weight 16 * 32 * 1 = 512; input 4 * 32 * 64 = 8,192 -> 12,288
    assert mxnet_onednn_layout_bytes(spec, 4, "inference", 16) == (864 + 512) * 4
    assert mxnet_onednn_layout_bytes(spec, 4, "training", 16) == (864 + 1_152 + 512 + 12_288) * 4


def test_rnn_bytes_from_the_checked_workspace() -> None:
    spec = spec_from_dict(
        {
            "name": "one-lstm",
            "input_shape": [40, 60],
            "layers": [{"type": "LSTM", "units": 128}, {"type": "Dense", "units": 2}],
        }
    )
    # second source: oneDNN's training workspace of (B, T, F, H) = (8, 40, 60, 128) is 2,519,040 bytes, the size of
    # the workspace tensor torch 2.13 returns (analytics/timeline_rules.py lstm_workspace_bytes' basis); minus the
    # simulated reserve (8*40*4*128 + 8*41*2*128) * 4 = 991,232
    assert mxnet_onednn_rnn_bytes(spec, 8, "training") == 2_519_040 - 991_232
    assert mxnet_onednn_rnn_bytes(spec, 8, "inference") == 0


# ----------------------------------------------------------------------------- what the run reads


def test_isa_from_flags_and_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    flags = frozenset({"avx2", "avx", "avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512_vnni"})
    monkeypatch.setattr(rows, "cpu_flags", lambda: flags)
    for name in rows.ONEDNN_ISA_ENV:
        monkeypatch.delenv(name, raising=False)
    assert rows.onednn_isa() == "avx512"
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    assert rows.onednn_isa() == "avx2"
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "ALL")
    assert rows.onednn_isa() == "avx512"
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA")
    monkeypatch.setenv("DNNL_MAX_CPU_ISA", "avx512_core")
    assert rows.onednn_isa() == "avx512"
    # a cap above the CPU does not raise it
    monkeypatch.setattr(rows, "cpu_flags", lambda: frozenset({"avx", "avx2"}))
    assert rows.onednn_isa() == "avx2"


def test_tf_onednn_switch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TF_ENABLE_ONEDNN_OPTS", raising=False)
    monkeypatch.setattr(rows, "cpu_flags", lambda: frozenset({"avx2", "avx512f", "avx512_vnni"}))
    assert rows.tf_onednn_enabled()  # TensorFlow's Linux default: on with AVX512_VNNI
    monkeypatch.setattr(rows, "cpu_flags", lambda: frozenset({"avx2", "avx512f"}))
    assert not rows.tf_onednn_enabled()
    monkeypatch.setenv("TF_ENABLE_ONEDNN_OPTS", "1")
    assert rows.tf_onednn_enabled()
    monkeypatch.setenv("TF_ENABLE_ONEDNN_OPTS", "0")
    monkeypatch.setattr(rows, "cpu_flags", lambda: frozenset({"avx512_vnni"}))
    assert not rows.tf_onednn_enabled()


def test_overhead_probe_runs_at_the_rows_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XFBENCH_CALIBRATION", "off")  # no kept figure of a real run may answer for the fake
    seen: list[int] = []

    def fake(config: Any, repeats: int | None = None, *, tensor: bool = True, use_server: bool = True, **_: Any) -> Any:
        seen.append(config.batch_size)
        assert json.loads(Path(config.model).read_text())["name"] == "probe-dense"
        return {"status": "ok", "measured_bytes": 10_000_000}

    monkeypatch.setattr(rows, "memory_in_fresh_process", fake)
    monkeypatch.setattr(rows, "_step_bytes", lambda config: 1_000 * config.batch_size)
    rows.framework_overhead.cache_clear()
    rows._probe_overhead.cache_clear()
    try:
        assert rows.framework_overhead("torch", "cpu", "inference", "sgd", "dense", 64) == 10_000_000 - 64_000
        assert rows.framework_overhead("torch", "cpu", "inference", "sgd", "dense") == 10_000_000 - 8_000
    finally:
        rows.framework_overhead.cache_clear()
        rows._probe_overhead.cache_clear()
    assert seen == [64, rows.PROBE_BATCH] and rows.PROBE_BATCH == 8


def test_a_probe_figure_is_kept_and_reused_until_the_environment_changes(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The first run measures the probe and keeps its figure; a second run (a new process: the in-process cache
    cleared) reads it back and names it; a changed oneDNN cap, ``XFBENCH_CALIBRATION=fresh`` or a figure older than
    the reuse window measures again."""
    monkeypatch.setenv("XFBENCH_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("XFBENCH_CALIBRATION", raising=False)
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    calls: list[int] = []

    def fake(config: Any, repeats: int | None = None, **_: Any) -> Any:
        calls.append(config.batch_size)
        return {"status": "ok", "measured_bytes": 5_000_000 + len(calls)}

    key = {"backend": "torch", "device": "cpu", "machine": "m"}
    monkeypatch.setattr(rows, "memory_in_fresh_process", fake)
    monkeypatch.setattr(rows, "_step_bytes", lambda config: 0)
    monkeypatch.setattr(
        rows, "probe_key", lambda *args: {**key, "args": list(args), "isa": os.environ.get("ONEDNN_MAX_CPU_ISA", "")}
    )

    def fresh_process() -> int | None:
        rows._probe_overhead.cache_clear()
        return rows._probe_overhead("torch", "cpu", "training", "sgd", "dense", 8)

    try:
        assert fresh_process() == 5_000_001 and rows.take_reused_probes() == {}
        assert fresh_process() == 5_000_001 and list(rows.take_reused_probes()) == ["dense"]  # reused
        assert calls == [8]
        monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
        assert fresh_process() == 5_000_002 and rows.take_reused_probes() == {}  # another CPU: measured
        monkeypatch.setenv("XFBENCH_CALIBRATION", "fresh")
        assert fresh_process() == 5_000_003
        monkeypatch.setenv("XFBENCH_CALIBRATION", "reuse")
        monkeypatch.setenv("XFBENCH_CALIBRATION_MAX_AGE_H", "1e-9")
        assert fresh_process() == 5_000_004  # too old
    finally:
        rows._probe_overhead.cache_clear()
    assert len(calls) == 4


def test_probe_family_counts_layers_beyond_the_conv_probe() -> None:
    spec = spec_from_dict(
        {
            "name": "three-conv-two-bn",
            "input_shape": [3, 8, 8],
            "layers": [
                {"type": "Conv2D", "filters": 4, "kernel": 3, "padding": "same"},
                {"type": "BatchNorm"},
                {"type": "Conv2D", "filters": 4, "kernel": 3, "padding": "same"},
                {"type": "BatchNorm"},
                {"type": "Conv2D", "filters": 4, "kernel": 3, "padding": "same"},
                {"type": "Flatten"},
                {"type": "Dense", "units": 2},
            ],
        }
    )
    # the conv probe has one conv and no BatchNorm: 2 more convs, 2 BatchNorms
    # and its largest dense layer: 4*8*8 = 256 features (after Flatten) -> 2 units, behind layers with weights
    assert rows.probe_family(spec) == "conv:Conv2D=2,BatchNorm=2;gemmdx=256>2"
    one = spec_from_dict(
        {"name": "one", "input_shape": [3, 8, 8], "layers": [{"type": "Conv2D", "filters": 4, "kernel": 3}]}
    )
    assert rows.probe_family(one) == "conv"


def test_per_layer_overhead_adds_each_layers_probe_difference(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XFBENCH_CALIBRATION", "off")
    measured = {"conv": 10_000_000, "conv2": 10_900_000, "bn": 11_800_000}

    def fake(config: Any, repeats: int | None = None, **_: Any) -> Any:
        return {"status": "ok", "measured_bytes": measured[Path(config.model).stem]}

    monkeypatch.setattr(rows, "memory_in_fresh_process", fake)
    monkeypatch.setattr(rows, "_step_bytes", lambda config: 0)
    rows.framework_overhead.cache_clear()
    rows._probe_overhead.cache_clear()
    try:
        family = "conv:Conv2D=2,BatchNorm=3"
        # training on TensorFlow: 10.0 MB + 2 * (10.9 - 10.0) + 3 * (11.8 - 10.0) = 17.2 MB
        assert rows.framework_overhead("tensorflow", "cpu", "training", "sgd", family, 4) == 17_200_000
        # inference, and the other backends: the conv probe's alone
        assert rows.framework_overhead("tensorflow", "cpu", "inference", "sgd", family, 4) == 10_000_000
        assert rows.framework_overhead("mxnet", "cpu", "training", "sgd", family, 4) == 10_000_000
    finally:
        rows.framework_overhead.cache_clear()
        rows._probe_overhead.cache_clear()


# ----------------------------------------------------------------------------- TensorFlow with its oneDNN ops


def test_tf_onednn_conv_gradient_holds_blocked_copies_not_im2col() -> None:
    from xfbench.analytics.timeline import simulate

    spec = spec_from_dict(
        {
            "name": "one-conv",
            "input_shape": [3, 8, 8],
            "layers": [
                {"type": "Conv2D", "filters": 4, "kernel": 3, "padding": "same"},
                {"type": "Flatten"},
                {"type": "Dense", "units": 2, "activation": "softmax"},
            ],
        }
    )

    def workspaces(onednn: bool) -> list[int]:
        tl = simulate(spec, 2, "training", framework="tensorflow", threads=2, tf_onednn=onednn)
        return sorted(e.nbytes for e in tl.events if e.action == "alloc" and e.category == "workspace")

    # oneDNN: the conv's input 2*3*8*8 = 384 floats (1,536 B) and output gradient 2*4*8*8 = 512 floats (2,048 B)
    assert workspaces(True) == [1_536, 2_048]
    # Eigen (oneDNN off): the filter gradient's im2col buffer, 64 positions x 27 = 1,728 floats per image; batch 2 is
    # within one shard: 3,456 floats = 13,824 B (the first layer wants no input gradient: no input buffer)
    assert workspaces(False) == [13_824]


def test_gemm_probe_adds_the_largest_dense_layers_buffers(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    seen: dict[str, Any] = {}
    measured = {
        "dense": 1_000_000,
        "conv": 2_000_000,
        "gemm-1x28x28-256": 1_700_000,
        "gemm-1x28x28-2": 1_200_000,
        "gemmdx-1x28x28-256": 2_900_000,
        "gemmdx-1x28x28-2": 1_300_000,
    }

    def fake(config: Any, repeats: int | None = None, **_: Any) -> Any:
        name = Path(config.model).stem
        seen[name] = json.loads(Path(config.model).read_text())
        return {"status": "ok", "measured_bytes": measured[name]}

    monkeypatch.setattr(rows, "memory_in_fresh_process", fake)
    monkeypatch.setattr(rows, "_step_bytes", lambda config: 0)
    rows.framework_overhead.cache_clear()
    rows._probe_overhead.cache_clear()
    try:
        # torch: the dense probe's 1.0 MB plus what the 784 -> 256 layer holds beyond a 784 -> 2 one, 0.5 MB
        assert rows.framework_overhead("torch", "cpu", "inference", "sgd", "dense;gemm=1x28x28>256", 64) == 1_500_000
        assert rows.framework_overhead("mxnet", "cpu", "inference", "sgd", "dense;gemm=1x28x28>256", 64) == 1_000_000
        # a conv model (the layer's input wants a gradient: gemmdx): in training 2.0 + (2.9 - 1.3) MB; its inference
        # peaks before the dense head: 2.0 MB
        assert rows.framework_overhead("torch", "cpu", "training", "sgd", "conv;gemmdx=1x28x28>256", 64) == 3_600_000
        assert rows.framework_overhead("torch", "cpu", "inference", "sgd", "conv;gemmdx=1x28x28>256", 64) == 2_000_000
    finally:
        rows.framework_overhead.cache_clear()
        rows._probe_overhead.cache_clear()
    assert seen["gemm-1x28x28-256"]["input_shape"] == [1, 28, 28]
    assert seen["gemm-1x28x28-256"]["layers"] == [{"type": "Flatten"}, {"type": "Dense", "units": 256}]
    assert seen["gemmdx-1x28x28-256"]["layers"] == [
        {"type": "BatchNorm"},
        {"type": "Flatten"},
        {"type": "Dense", "units": 256},
    ]
    assert seen["gemm-1x28x28-2"]["layers"][-1] == {"type": "Dense", "units": 2}


def test_probe_family_of_a_transformer_counts_attention_blocks_beyond_the_attn_probe() -> None:
    """gpt2_tiny has 2 attention layers, the attn probe 1: one more block's first-step memory (attn2 - attn); its
    largest dense layer is the tied head, 128 -> 8,192 on 64 tokens, behind layers with weights (dx)."""
    from xfbench.analytics.catalog import catalog_model

    assert rows.probe_family(catalog_model("gpt2_tiny")) == "attn:MultiHeadAttention=1;gemmdx=64x128>8192"
    assert rows.probe_family(catalog_model("gpt2")).startswith("attn:MultiHeadAttention=11;")
    probe = spec_from_dict(json.loads((rows.PROBES / "attn.json").read_text()))
    assert rows.probe_family(probe).split(";")[0] == "attn"  # the probe itself: no block beyond its own
