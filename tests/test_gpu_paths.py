"""The GPU code paths' logic, tested on the CPU where it allows (fakes, monkeypatch, logical CPU devices), and
the parts that need a GPU marked ``gpu`` (they skip with a reason where there is none).

Covered: the one TF32 policy (``XFBENCH_TF32``) and how each backend applies it; the one OOM classifier
(exceptions built from the frameworks' own messages); NVML attribution (an empty process list is unknown, not
0 bytes) and the CUDA -> NVML mapping by PCI bus id; the memory worker's RLIMIT_AS on CPU workers only; the
torch collectives' device; TensorFlow's per-replica placement and fresh host->device copies; the GPU cache
release before a memory worker; ``torch.cuda.init()`` before the first peak reset.
"""

from __future__ import annotations

import ctypes
import importlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import require_backend_or_skip
from xfbench.backends import common, nvml
from xfbench.reports.paths import subprocess_env

# --- helpers -------------------------------------------------------------------------------------------------


def _need(backend: str) -> None:
    require_backend_or_skip(backend)


def _named(name: str, *bases: type) -> type:
    """An exception class called ``name`` (as a framework names it), without importing the framework."""
    return type(name, bases or (Exception,), {})


# --- TF32 policy -------------------------------------------------------------------------------------------


def test_tf32_policy_reads_one_variable_and_validates_it() -> None:
    assert common.DEFAULT_TF32 == "off"
    assert common.tf32_policy({}) == "off"
    assert common.tf32_policy({"XFBENCH_TF32": ""}) == "off"
    assert common.tf32_policy({"XFBENCH_TF32": "on"}) == "on"
    assert common.tf32_policy({"XFBENCH_TF32": " OFF "}) == "off"
    with pytest.raises(ValueError) as err:
        common.tf32_policy({"XFBENCH_TF32": "maybe"})
    text = str(err.value)
    assert "'maybe'" in text and "allowed: on, off" in text and "\n" not in text


def test_tf32_row_value_is_blank_on_cpu_and_the_effective_policy_on_gpus() -> None:
    on = {"XFBENCH_TF32": "on"}
    assert common.tf32_row_value("cpu", on) == ""
    assert common.tf32_row_value(None, on) == ""
    assert common.tf32_row_value("gpu:0", on) == "on"
    assert common.tf32_row_value("gpu", {}) == "off"
    # NVIDIA's process-wide switch turns TF32 off in cuBLAS/cuDNN whatever the framework asks.
    assert common.tf32_row_value("gpu:1", {**on, "NVIDIA_TF32_OVERRIDE": "0"}) == "off"


def test_framework_env_defaults() -> None:
    assert common.framework_env_defaults("tensorflow", "on") == {"TF_FORCE_GPU_ALLOW_GROWTH": "true"}
    assert common.framework_env_defaults("mxnet", "off") == {"NVIDIA_TF32_OVERRIDE": "0"}
    assert common.framework_env_defaults("mxnet", "on") == {}
    assert common.framework_env_defaults("torch", "off") == {}


def test_prepare_framework_env_keeps_a_users_growth_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TF_FORCE_GPU_ALLOW_GROWTH", raising=False)
    assert common.prepare_framework_env("tensorflow", "off") == {"TF_FORCE_GPU_ALLOW_GROWTH": "true"}
    assert os.environ["TF_FORCE_GPU_ALLOW_GROWTH"] == "true"
    monkeypatch.setenv("TF_FORCE_GPU_ALLOW_GROWTH", "false")
    assert common.prepare_framework_env("tensorflow", "off") == {}
    assert os.environ["TF_FORCE_GPU_ALLOW_GROWTH"] == "false"
    monkeypatch.delenv("NVIDIA_TF32_OVERRIDE", raising=False)
    assert common.prepare_framework_env("mxnet", "off") == {"NVIDIA_TF32_OVERRIDE": "0"}
    assert os.environ["NVIDIA_TF32_OVERRIDE"] == "0"


# --- the one OOM classifier ----------------------------------------------------------------------------------

OpError = _named("OpError")
ResourceExhaustedError = _named("ResourceExhaustedError", OpError)
OutOfMemoryError = _named("OutOfMemoryError", RuntimeError)
MXNetError = _named("MXNetError", RuntimeError)


@pytest.mark.parametrize(
    "exc",
    [
        ResourceExhaustedError("OOM when allocating tensor with shape[4096,512,28,28] and type float on GPU:0"),
        OpError("OOM when allocating tensor with shape[8192,8192]"),  # the base class, message only
        OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 79.15 GiB total capacity)"),
        RuntimeError("CUDA error: out of memory"),
        RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 1099511627776 bytes."),
        RuntimeError("CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`"),
        MXNetError("[07:00:00] src/storage/./pooled_storage_manager.h:161: cudaMalloc retry failed: out of memory"),
        MXNetError("cudaMalloc retevl: out of memory"),
        MXNetError("Out of memory"),
        MXNetError("Failed to allocate CPU Memory"),
        MemoryError(),
    ],
    ids=lambda e: type(e).__name__ + ":" + str(e)[:24],
)
def test_oom_errors_of_every_backend_are_recognised(exc: BaseException) -> None:
    assert common.is_oom_error(exc)


@pytest.mark.parametrize(
    "exc",
    [
        ValueError("out of memory"),  # not a framework error: a message alone does not make an OOM
        RuntimeError("shape mismatch: mat1 and mat2 shapes cannot be multiplied"),
        MXNetError("Check failed: shape mismatch"),
        OpError("Invalid argument: Matrix size-incompatible"),
        KeyError("memory"),
    ],
)
def test_other_errors_are_not_oom(exc: BaseException) -> None:
    assert not common.is_oom_error(exc)


def test_oom_cause_is_followed() -> None:
    try:
        try:
            raise MemoryError()
        except MemoryError as inner:
            raise RuntimeError("step failed") from inner
    except RuntimeError as outer:
        assert common.is_oom_error(outer)


def test_oom_messages_in_worker_results() -> None:
    from xfbench.benchmarks.exercises import _is_oom

    assert _is_oom({"status": "oom", "message": ""})
    assert _is_oom({"status": "error", "message": "ResourceExhaustedError: OOM when allocating tensor with shape[2]"})
    assert _is_oom({"status": "error", "message": "MXNetError: cudaMalloc retry failed: out of memory"})
    assert _is_oom({"status": "error", "message": "memory worker exited -6: terminate called after bad_alloc"})
    assert not _is_oom({"status": "error", "message": "ValueError: unknown dtype 'int8'"})
    assert not _is_oom({"status": "ok", "message": "out of memory"})


def test_worker_classifies_with_the_one_table() -> None:
    from xfbench.benchmarks.harness.worker import _is_oom

    assert _is_oom(ResourceExhaustedError("OOM when allocating tensor with shape[1]"))
    assert _is_oom(OutOfMemoryError("CUDA out of memory."))
    assert not _is_oom(RuntimeError("expected scalar type Float"))


# --- the memory worker's address-space cap ------------------------------------------------------------------


def test_address_space_limit_applies_to_cpu_workers_only() -> None:
    from xfbench.benchmarks.harness.worker import address_space_limit

    assert address_space_limit("cpu", "1GB") == 10**9
    assert address_space_limit("cpu", "512MiB") == 512 * 2**20
    assert address_space_limit("gpu:0", "1GB") is None
    assert address_space_limit("gpu", "1GB") is None
    assert address_space_limit("cpu", None) is None


@pytest.mark.parametrize("device, expected", [("cpu", [(10**9, 10**9)]), ("gpu:0", [])])
def test_worker_main_sets_rlimit_only_on_cpu(
    device: str, expected: list[tuple[int, int]], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import resource

    from xfbench.benchmarks.harness import worker

    calls: list[tuple[int, int]] = []
    monkeypatch.setattr(resource, "setrlimit", lambda what, lim: calls.append(lim))
    monkeypatch.setattr(worker, "run", lambda args, child_limit=None: {"status": "ok", "config": args.device})
    argv = ["--backend", "torch", "--model", "mlp", "--phase", "training", "--batch", "2", "--device", device]
    assert worker.main([*argv, "--memory-limit", "1GB"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert calls == expected
    assert result["status"] == "ok"
    if device == "cpu":
        assert "message" not in result
    else:
        assert "not applied on gpu:0" in result["message"]


# --- NVML and the CUDA driver -------------------------------------------------------------------------------


class _Proc:
    def __init__(self, pid: int, used: int | None) -> None:
        self.pid, self.usedGpuMemory = pid, used


class _FakeNVML:
    """Two GPUs, NVML indices 0 and 1 (bus ids 0000:1A:00.0 and 0000:3B:00.0); this process runs on index 1."""

    def __init__(self, procs: dict[int, list[_Proc]]) -> None:
        self.bus = {"0000:1A:00.0": 0, "0000:3B:00.0": 1}
        self.procs = procs
        self.bus_lookups: list[str] = []

    def nvmlInit(self) -> None:
        pass

    def nvmlShutdown(self) -> None:
        pass

    def nvmlDeviceGetHandleByIndex(self, i: int) -> int:
        if i not in (0, 1):
            raise RuntimeError("NVMLError_InvalidArgument")
        return i

    def nvmlDeviceGetHandleByUUID(self, uuid: str) -> int:
        return {"GPU-aaa": 0, "GPU-bbb": 1}[uuid]

    def nvmlDeviceGetHandleByPciBusId_v2(self, bus: str) -> int:
        self.bus_lookups.append(bus)
        return self.bus[bus.upper()]

    def nvmlDeviceGetComputeRunningProcesses(self, handle: int) -> list[_Proc]:
        return self.procs.get(handle, [])

    def nvmlDeviceGetMemoryInfo(self, handle: int) -> Any:
        if handle == 0:
            raise RuntimeError("NVMLError_NotSupported")
        return type("Memory", (), {"free": 3 * 2**30, "total": 8 * 2**30, "used": 5 * 2**30})()


def test_nvml_empty_process_list_is_unknown_not_zero(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = _FakeNVML({1: [_Proc(os.getpid(), 3 * 2**20)]})
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    monkeypatch.setattr(nvml, "cuda_pci_bus_id", lambda i, loader=None: None)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert nvml.nvml_process_memory(0) is None  # NVML lists nobody on GPU 0: cannot attribute
    assert nvml.nvml_process_memory(1) == 3 * 2**20


def test_nvml_maps_cuda_devices_by_pci_bus_id(monkeypatch: pytest.MonkeyPatch) -> None:
    # CUDA (fastest first) calls the bus-0x3B GPU device 0; NVML (by PCI order) calls it 1.
    fake = _FakeNVML({1: [_Proc(os.getpid(), 5 * 2**20)], 0: [_Proc(os.getpid(), 7 * 2**20)]})
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    monkeypatch.setattr(nvml, "cuda_pci_bus_id", lambda i, loader=None: {0: "0000:3b:00.0", 1: "0000:1a:00.0"}[i])
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert nvml.nvml_process_memory(0) == 5 * 2**20
    assert nvml.nvml_process_memory(1) == 7 * 2**20
    assert fake.bus_lookups == ["0000:3b:00.0", "0000:1a:00.0"]


def test_nvml_falls_back_to_the_visible_uuid_without_the_driver(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = _FakeNVML({1: [_Proc(os.getpid(), 2**20)]})
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    monkeypatch.setattr(nvml, "cuda_pci_bus_id", lambda i, loader=None: None)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-bbb")
    assert nvml.nvml_process_memory(0) == 2**20
    assert nvml.nvml_process_memory(1) is None  # only one GPU is visible
    assert fake.bus_lookups == []


def test_nvml_free_memory_is_the_devices_free_figure(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = _FakeNVML({})
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    monkeypatch.setattr(nvml, "cuda_pci_bus_id", lambda i, loader=None: {0: "0000:3b:00.0", 1: "0000:1a:00.0"}[i])
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert nvml.nvml_free_memory(0) == 3 * 2**30  # CUDA 0 is NVML 1, which reports 3 GiB free
    assert nvml.nvml_free_memory(1) is None  # NVML 0 raises NotSupported: unknown, not 0
    monkeypatch.setitem(sys.modules, "pynvml", None)  # `import pynvml` now raises ImportError
    assert nvml.nvml_free_memory(0) is None  # no nvidia-ml-py


class _FakeLibcuda:
    """ctypes-level stand-in for libcuda: two devices, ordinals 0 and 1."""

    def __init__(self, init_rc: int = 0) -> None:
        self.init_rc = init_rc

    def cuInit(self, flags: int) -> int:
        return self.init_rc

    def cuDeviceGetCount(self, ref: Any) -> int:
        ref._obj.value = 2
        return 0

    def cuDeviceGet(self, ref: Any, ordinal: ctypes.c_int) -> int:
        if ordinal.value not in (0, 1):
            return 101  # CUDA_ERROR_INVALID_DEVICE
        ref._obj.value = ordinal.value
        return 0

    def cuDeviceGetPCIBusId(self, buf: Any, size: ctypes.c_int, dev: ctypes.c_int) -> int:
        buf.value = [b"0000:3B:00.0", b"0000:1A:00.0"][dev.value]
        return 0


def test_libcuda_wrappers_with_a_fake_driver() -> None:
    lib = _FakeLibcuda()
    assert nvml.cuda_device_count(loader=lambda: lib) == 2
    assert nvml.cuda_pci_bus_id(0, loader=lambda: lib) == "0000:3B:00.0"
    assert nvml.cuda_pci_bus_id(1, loader=lambda: lib) == "0000:1A:00.0"
    assert nvml.cuda_pci_bus_id(2, loader=lambda: lib) is None
    assert nvml.cuda_pci_bus_id(-1, loader=lambda: lib) is None
    broken = _FakeLibcuda(init_rc=100)  # CUDA_ERROR_NO_DEVICE
    assert nvml.cuda_device_count(loader=lambda: broken) is None
    assert nvml.cuda_pci_bus_id(0, loader=lambda: broken) is None
    assert nvml.cuda_device_count(loader=lambda: None) is None


def test_visible_gpu_count_falls_back_to_nvml(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(nvml, "cuda_device_count", lambda loader=None: 3)
    assert nvml.visible_gpu_count() == 3
    monkeypatch.setattr(nvml, "cuda_device_count", lambda loader=None: None)
    monkeypatch.setattr(nvml, "cuda_pci_bus_id", lambda i, loader=None: None)
    monkeypatch.setitem(sys.modules, "pynvml", _FakeNVML({}))
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert nvml.visible_gpu_count() == 2
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    assert nvml.visible_gpu_count() == 1
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert nvml.visible_gpu_count() == 0


def test_no_driver_here_means_no_count() -> None:
    if nvml._load_libcuda() is not None:
        pytest.skip("an NVIDIA driver is present (see test_gpu_cuda_mapping_matches_torch)")
    assert nvml.cuda_device_count() is None
    assert nvml.cuda_pci_bus_id(0) is None


# --- torch ---------------------------------------------------------------------------------------------------


@pytest.mark.torch
def test_torch_collectives_run_on_the_ranks_device() -> None:
    _need("torch")
    from xfbench.backends.torch.distributed import collective_setup

    assert collective_setup(True, 0) == ("nccl", "cuda:0")
    assert collective_setup(True, 3) == ("nccl", "cuda:3")
    assert collective_setup(False, 1) == ("gloo", "cpu")


@pytest.mark.torch
def test_torch_max_over_ranks_on_a_gloo_group(tmp_path: Path) -> None:
    _need("torch")
    import torch.distributed as dist
    from xfbench.backends.torch.distributed import max_over_ranks

    store = dist.FileStore(str(tmp_path / "store"), 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        out = max_over_ranks([0.25, 1.5, 0.125], "cpu")
    finally:
        dist.destroy_process_group()
    assert out == [0.25, 1.5, 0.125] and all(type(v) is float for v in out)


@pytest.mark.torch
def test_torch_apply_tf32_policy_sets_both_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    _need("torch")
    import torch
    from xfbench.backends.torch.device import apply_tf32_policy

    monkeypatch.delenv("NVIDIA_TF32_OVERRIDE", raising=False)
    old = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    try:
        assert apply_tf32_policy("on") == "on"
        assert torch.backends.cuda.matmul.allow_tf32 is True and torch.backends.cudnn.allow_tf32 is True
        assert apply_tf32_policy("off") == "off"
        assert torch.backends.cuda.matmul.allow_tf32 is False and torch.backends.cudnn.allow_tf32 is False
        monkeypatch.setenv("NVIDIA_TF32_OVERRIDE", "0")
        assert apply_tf32_policy("on") == "off"  # cuBLAS/cuDNN obey the override
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


@pytest.mark.torch
def test_get_backend_applies_the_runs_policy(monkeypatch: pytest.MonkeyPatch) -> None:
    _need("torch")
    import torch
    from xfbench.backends import get_backend

    old = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    try:
        monkeypatch.setenv("XFBENCH_TF32", "on")
        get_backend("torch")
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
        monkeypatch.setenv("XFBENCH_TF32", "off")
        get_backend("torch")
        assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
        monkeypatch.setenv("XFBENCH_TF32", "sometimes")
        with pytest.raises(ValueError, match=r"'sometimes'.*allowed: on, off"):
            get_backend("torch")
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


@pytest.mark.torch
def test_torch_peak_reset_initialises_cuda_first(monkeypatch: pytest.MonkeyPatch) -> None:
    _need("torch")
    import contextlib

    import torch
    from xfbench.backends.torch import memory

    calls: list[str] = []
    monkeypatch.setattr(memory, "resolve_device", lambda d: torch.device("cuda", 0))
    monkeypatch.setattr(torch.cuda, "init", lambda: calls.append("init"))
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda dev: calls.append(f"reset {dev}"))
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: calls.append("empty_cache"))
    monkeypatch.setattr(torch.cuda, "device", lambda dev: contextlib.nullcontext())
    memory.reset_peak_memory("gpu:0")
    memory.release_cached_memory("gpu:0")
    assert calls == ["init", "reset cuda:0", "empty_cache"]


@pytest.mark.torch
def test_memory_worker_gets_the_gpu_cache_released_first(monkeypatch: pytest.MonkeyPatch) -> None:
    _need("torch")
    import xfbench.benchmarks.bench_models as bench_models
    from xfbench.backends.torch import memory

    released: list[str] = []
    monkeypatch.setattr(memory, "release_cached_memory", released.append)
    bench_models.release_gpu_cache("torch", "gpu:0")
    bench_models.release_gpu_cache("torch", "cpu")
    assert released == ["gpu:0"]
    assert bench_models._base_row(_cfg("torch", "cpu"))["tf32"] == ""
    monkeypatch.setenv("XFBENCH_TF32", "on")
    monkeypatch.delenv("NVIDIA_TF32_OVERRIDE", raising=False)
    assert bench_models._base_row(_cfg("torch", "gpu:0"))["tf32"] == "on"


def _cfg(backend: str, device: str) -> Any:
    from xfbench.benchmarks.harness.workload import Config

    return Config(backend, "mlp", "training", 2, device, "float32", "sgd")


@pytest.mark.torch
def test_torch_oom_types_are_recognised() -> None:
    _need("torch")
    import torch

    assert common.is_oom_error(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 MiB"))
    assert common.is_oom_error(torch.cuda.OutOfMemoryError("CUDA out of memory."))


# --- TensorFlow ---------------------------------------------------------------------------------------------


@pytest.mark.tensorflow
def test_tf_fresh_device_copy_makes_a_new_tensor_per_call() -> None:
    _need("tensorflow")
    from xfbench.backends.tensorflow.ops import fresh_device_copy

    host = np.arange(12, dtype=np.float32).reshape(3, 4)
    a, b = fresh_device_copy(host, "/CPU:0"), fresh_device_copy(host, "/CPU:0")
    assert a is not b
    assert a.device.endswith("CPU:0") and a.dtype.name == "float32"
    np.testing.assert_array_equal(a.numpy(), host)
    np.testing.assert_array_equal(b.numpy(), host)


@pytest.mark.tensorflow
def test_tf_transfer_timer_copies_host_arrays_every_call(monkeypatch: pytest.MonkeyPatch) -> None:
    _need("tensorflow")
    from xfbench.backends.tensorflow import ops

    copies: list[tuple[type, tuple[int, ...], str]] = []
    real = ops.fresh_device_copy

    def counting(host: np.ndarray, tf_device: str) -> Any:
        copies.append((type(host), host.shape, tf_device))
        return real(host, tf_device)

    monkeypatch.setattr(ops, "fresh_device_copy", counting)
    run = ops.matmul_timer(3, 5, 2, "float32", "cpu", transfers=True)
    assert copies == []
    for _ in range(3):
        run()
    # Two operands per call, each from the numpy host data (never a cached device tensor).
    assert copies == [(np.ndarray, (3, 5), "/CPU:0"), (np.ndarray, (5, 2), "/CPU:0")] * 3


@pytest.mark.tensorflow
def test_tf_apply_tf32_policy(monkeypatch: pytest.MonkeyPatch) -> None:
    _need("tensorflow")
    from xfbench.backends.tensorflow._tf import tf
    from xfbench.backends.tensorflow.device import apply_tf32_policy

    monkeypatch.delenv("NVIDIA_TF32_OVERRIDE", raising=False)
    old = tf.config.experimental.tensor_float_32_execution_enabled()
    try:
        assert apply_tf32_policy("on") == "on" and tf.config.experimental.tensor_float_32_execution_enabled()
        assert apply_tf32_policy("off") == "off" and not tf.config.experimental.tensor_float_32_execution_enabled()
    finally:
        tf.config.experimental.enable_tensor_float_32_execution(old)


@pytest.mark.tensorflow
def test_tf_oom_types_are_recognised() -> None:
    _need("tensorflow")
    from xfbench.backends.tensorflow._tf import tf

    assert common.is_oom_error(tf.errors.ResourceExhaustedError(None, None, "OOM when allocating tensor"))
    assert not common.is_oom_error(tf.errors.InvalidArgumentError(None, None, "Matrix size-incompatible"))


_TF_PLACEMENT = """
import json, os
import xfbench.backends.tensorflow
from tensorflow.python.eager import context
started = context.context()._initialized  # False: the growth variable is in place before TF creates devices
from xfbench.backends.tensorflow.distributed import configure, per_replica_values, wait_first_elements
devices = configure(2)
from xfbench.backends.tensorflow._tf import tf
strategy = tf.distribute.MirroredStrategy(devices=devices)
values = per_replica_values(strategy, lambda i: tf.fill([1024], float(i + 1)))
placed = [t.device for t in strategy.experimental_local_results(values)]
reduce = tf.function(lambda v: strategy.run(lambda t: tf.distribute.get_replica_context().all_reduce("sum", t), (v,)))
firsts = wait_first_elements(strategy, reduce(values))
growth = os.environ.get("TF_FORCE_GPU_ALLOW_GROWTH")
print(json.dumps({"placed": placed, "firsts": firsts, "growth": growth, "started_at_import": started}))
"""


@pytest.mark.tensorflow
def test_tf_replica_values_live_on_their_devices_and_growth_is_set() -> None:
    """In a fresh process (logical CPU devices must be configured before TensorFlow starts)."""
    _need("tensorflow")
    env = subprocess_env({"OMP_NUM_THREADS": "1"})
    env.pop("TF_FORCE_GPU_ALLOW_GROWTH", None)
    proc = subprocess.run(
        [sys.executable, "-c", _TF_PLACEMENT], env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert [d.rsplit("/", 1)[-1] for d in out["placed"]] == ["device:CPU:0", "device:CPU:1"]
    assert out["firsts"] == [3.0, 3.0]  # 1 + 2 on each replica
    assert out["growth"] == "true" and out["started_at_import"] is False


# --- MXNet ---------------------------------------------------------------------------------------------------


@pytest.mark.mxnet
def test_mxnet_tf32_policy_is_the_nvidia_override(monkeypatch: pytest.MonkeyPatch) -> None:
    _need("mxnet")
    from xfbench.backends.mxnet.device import apply_tf32_policy

    monkeypatch.delenv("NVIDIA_TF32_OVERRIDE", raising=False)
    assert apply_tf32_policy("on") == "on"
    assert "NVIDIA_TF32_OVERRIDE" not in os.environ
    assert apply_tf32_policy("off") == "off"
    assert os.environ["NVIDIA_TF32_OVERRIDE"] == "0"
    assert apply_tf32_policy("on") == "off"  # cannot be undone once set for this process


@pytest.mark.mxnet
def test_mxnet_oom_and_cache_release_on_cpu() -> None:
    _need("mxnet")
    from xfbench.backends.mxnet import memory
    from xfbench.backends.mxnet.device import mx

    assert common.is_oom_error(mx.base.MXNetError("cudaMalloc retry failed: out of memory"))
    assert not common.is_oom_error(mx.base.MXNetError("Check failed: shape mismatch"))
    memory.release_cached_memory("cpu")  # a no-op on the CPU, must not raise
    assert memory.memory_stats("cpu").reserved is None


# --- GPU: what only a GPU can confirm -----------------------------------------------------------------------


def _torch_gpu() -> Any:
    _need("torch")
    import torch

    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU visible to torch on this machine")
    return torch


@pytest.mark.gpu
@pytest.mark.torch
def test_gpu_cuda_mapping_matches_torch() -> None:
    torch = _torch_gpu()
    assert nvml.visible_gpu_count() == torch.cuda.device_count()
    props = torch.cuda.get_device_properties(0)
    bus = nvml.cuda_pci_bus_id(0)
    assert bus is not None
    domain, bus_no, rest = bus.split(":")
    assert (int(domain, 16), int(bus_no, 16), int(rest.split(".")[0], 16)) == (
        props.pci_domain_id,
        props.pci_bus_id,
        props.pci_device_id,
    )


@pytest.mark.gpu
@pytest.mark.torch
def test_gpu_nccl_reduction_of_times(tmp_path: Path) -> None:
    torch = _torch_gpu()
    import torch.distributed as dist
    from xfbench.backends.torch.distributed import collective_setup, max_over_ranks

    backend, device = collective_setup(True, 0)
    torch.cuda.set_device(0)
    dist.init_process_group(backend, store=dist.FileStore(str(tmp_path / "s"), 1), rank=0, world_size=1)
    try:
        assert max_over_ranks([0.5, 0.25], device) == [0.5, 0.25]
    finally:
        dist.destroy_process_group()


@pytest.mark.gpu
@pytest.mark.torch
def test_gpu_memory_worker_ignores_the_address_space_cap() -> None:
    _torch_gpu()
    cmd = [sys.executable, "-m", "xfbench.benchmarks.harness.worker", "--backend", "torch", "--model", "mlp"]
    cmd += ["--phase", "training", "--batch", "8", "--device", "gpu:0", "--memory-limit", "2GB"]
    proc = subprocess.run(cmd, env=subprocess_env(), capture_output=True, text=True, timeout=600, check=False)
    result = json.loads([ln for ln in proc.stdout.splitlines() if ln.startswith("{")][-1])
    assert result["status"] == "ok", result
    assert "not applied on gpu:0" in result["message"] and result["measured_bytes"] > 0


_FP32_MATMUL = {
    "torch": "import torch; a, b = (torch.from_numpy(x).cuda() for x in (A, B)); out = (a @ b).cpu().numpy()",
    "tensorflow": "from xfbench.backends.tensorflow._tf import tf\n"
    "with tf.device('/GPU:0'): out = tf.matmul(tf.constant(A), tf.constant(B)).numpy()",
    "mxnet": "from xfbench.backends.mxnet.device import mx\n"
    "out = mx.nd.dot(mx.nd.array(A, ctx=mx.gpu(0)), mx.nd.array(B, ctx=mx.gpu(0))).asnumpy()",
}
_PRECISION = """
import json, numpy as np
from xfbench.backends import get_backend
get_backend({backend!r})
rng = np.random.default_rng(0)
A, B = (rng.standard_normal((1024, 1024), dtype=np.float32) for _ in range(2))
{matmul}
ref = A.astype(np.float64) @ B.astype(np.float64)
print(json.dumps({{"rel": float(np.linalg.norm(out - ref) / np.linalg.norm(ref))}}))
"""


def _gpu_matmul_error(backend: str, policy: str) -> float:
    env = subprocess_env({"XFBENCH_TF32": policy})
    env.pop("NVIDIA_TF32_OVERRIDE", None)
    code = _PRECISION.format(backend=backend, matmul=_FP32_MATMUL[backend])
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return float(json.loads(proc.stdout.strip().splitlines()[-1])["rel"])


def _gpu_present(backend: str) -> None:
    """Skips unless ``backend`` sees a GPU here."""
    _need(backend)
    if backend == "torch":
        _torch_gpu()
    elif backend == "tensorflow":
        from xfbench.backends.tensorflow._tf import tf

        if not tf.config.list_physical_devices("GPU"):
            pytest.skip("no GPU visible to TensorFlow on this machine")
    else:
        from xfbench.backends.mxnet.device import _num_gpus

        if _num_gpus() == 0:
            pytest.skip("no GPU visible to MXNet on this machine (CPU build or no driver)")


@pytest.mark.gpu
@pytest.mark.parametrize(
    "backend",
    [
        pytest.param("torch", marks=pytest.mark.torch),
        pytest.param("tensorflow", marks=pytest.mark.tensorflow),
        pytest.param("mxnet", marks=pytest.mark.mxnet),
    ],
)
def test_gpu_tf32_off_means_ieee_float32(backend: str) -> None:
    """Under the default policy (off), a float32 GPU matmul is as accurate as float32 arithmetic: TF32 keeps
    10 mantissa bits (~1e-3 relative error on a 1024-deep product), float32 23 (~1e-6)."""
    _gpu_present(backend)
    assert _gpu_matmul_error(backend, "off") < 1e-5


@pytest.mark.gpu
@pytest.mark.torch
def test_gpu_tf32_on_is_visible_on_ampere_and_newer() -> None:
    major = int(_torch_gpu().cuda.get_device_capability(0)[0])
    if major < 8:
        pytest.skip(f"compute capability {major}.x has no TF32 (needs 8.0+)")
    assert _gpu_matmul_error("torch", "on") > 1e-4


@pytest.mark.gpu
@pytest.mark.tensorflow
def test_gpu_tf_grows_memory_instead_of_taking_the_gpu() -> None:
    _gpu_present("tensorflow")
    pytest.importorskip("pynvml", reason="nvidia-ml-py is not installed")
    code = (
        "import json, pynvml\n"
        "from xfbench.backends.nvml import cuda_pci_bus_id\n"
        "pynvml.nvmlInit(); h = pynvml.nvmlDeviceGetHandleByPciBusId_v2(cuda_pci_bus_id(0))\n"
        "before = pynvml.nvmlDeviceGetMemoryInfo(h).used\n"
        "from xfbench.backends.tensorflow._tf import tf\n"
        "import xfbench.backends.tensorflow\n"
        "with tf.device('/GPU:0'): tf.ones([1024, 1024]).numpy()\n"
        "info = pynvml.nvmlDeviceGetMemoryInfo(h)\n"
        "print(json.dumps({'grown': info.used - before, 'total': info.total}))\n"
    )
    env = subprocess_env()
    env.pop("TF_FORCE_GPU_ALLOW_GROWTH", None)
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["grown"] < 0.5 * out["total"], out


@pytest.mark.gpu
@pytest.mark.tensorflow
def test_gpu_tf_fresh_copy_lands_on_the_gpu() -> None:
    _gpu_present("tensorflow")
    tfops = importlib.import_module("xfbench.backends.tensorflow.ops")
    from xfbench.backends.tensorflow._tf import tf

    host = np.ones((256, 256), dtype=np.float32)
    a, b = tfops.fresh_device_copy(host, "/GPU:0"), tfops.fresh_device_copy(host, "/GPU:0")
    assert a is not b and a.device.endswith("GPU:0") and b.device.endswith("GPU:0")
    assert float(tf.reduce_sum(a).numpy()) == 256 * 256
