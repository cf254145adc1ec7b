"""The backend contracts (:mod:`backends.base`): each installed adapter satisfies exactly its Protocols, the
Protocols cover every call ``benchmarks/`` makes, and the shared rules of :mod:`backends.common` hold.

1. Conformance (marked ``torch``/``tensorflow``/``mxnet``, so each tox env checks its own framework; a skip with
   the reason where the framework is absent): for every module of :data:`backends.base.CONTRACTS`, each member
   of each of its Protocols is present; a function has the Protocol's parameters (names, kinds, defaults:
   :func:`inspect.signature`; annotations are not compared, an adapter may accept more, e.g. ``torch.device``); a
   constant is a plain value of the annotated type. Exactly: a module's ``__all__`` is its Protocols' members
   plus the extras listed in :data:`EXTRAS`, each with its reason.
2. Framework-free: :data:`BENCHMARK_CALLS` lists, by hand from ``benchmarks/`` (``file: call``), every call it
   makes into a backend module with the arguments it passes; each must be a member of that module's Protocol
   and bind to the member's signature.
3. Framework-free: the shared rules (host memory, weight validation, optimizer table, dtype checks) against
   values computed here by hand.
"""

from __future__ import annotations

import importlib
import inspect
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import pytest
from xfbench.analytics.catalog import catalog_model
from xfbench.analytics.vocab import ADAM_EPSILON
from xfbench.backends import common, get_backend, is_available
from xfbench.backends.base import (
    CONTRACTS,
    OPTIONAL_CONTRACTS,
    DeviceUnavailable,
    DistributedWorker,
    MatmulOps,
    MemoryModule,
    ModelAdapter,
    Profiler,
    StreamOps,
    parse_device,
)

BACKEND_PARAMS = [
    pytest.param("torch", marks=pytest.mark.torch),
    pytest.param("tensorflow", marks=pytest.mark.tensorflow),
    pytest.param("mxnet", marks=pytest.mark.mxnet),
]

# Public names beyond the contracts: (backend, module) -> {name: why it is public}.
EXTRAS: dict[tuple[str, str], dict[str, str]] = {
    ("torch", ""): {"TorchModel": "the model class, for type hints and isinstance checks"},
    ("tensorflow", ""): {"KERAS_VERSION": "Keras 3 is versioned apart from TensorFlow"},
    ("tensorflow", "ops"): {"fresh_device_copy": "the one host->device copy its timers make (tested on its own)"},
    ("torch", "profile"): {"attribute_events": "trace attribution, tested on synthetic events"},
    ("tensorflow", "profile"): {"attribute_ops": "trace attribution, tested on synthetic ops"},
    ("mxnet", "profile"): {"attribute_trace": "trace attribution, tested on synthetic traces"},
}


def protocol_members(proto: type) -> dict[str, Any]:
    """A Protocol's members by name (its own and its Protocol bases'): functions and properties."""
    out: dict[str, Any] = {}
    for cls in reversed(proto.__mro__):
        if cls is Protocol or not getattr(cls, "_is_protocol", False):
            continue
        out.update({k: v for k, v in vars(cls).items() if not k.startswith("_")})
    return out


def call_signature(member: Callable[..., Any]) -> inspect.Signature:
    """The signature a module's function must have: the Protocol method's without ``self``."""
    sig = inspect.signature(member)
    return sig.replace(parameters=list(sig.parameters.values())[1:])


def _shape(sig: inspect.Signature) -> list[tuple[str, Any, Any]]:
    return [(p.name, p.kind, p.default) for p in sig.parameters.values()]


def _matches(value: Any, hint: Any) -> bool:
    """``isinstance`` for the constants' annotations: ``str``, ``tuple[str, ...]`` and their ``| None``."""
    if isinstance(hint, types.UnionType):
        return any(_matches(value, h) for h in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if typing.get_origin(hint) is tuple:
        return isinstance(value, tuple) and all(isinstance(v, str) for v in value)
    return isinstance(value, hint)


def contract_problems(module: types.ModuleType, protocols: tuple[type, ...]) -> list[str]:
    """What ``module`` lacks or gets wrong against ``protocols`` (empty: it satisfies them)."""
    problems: list[str] = []
    for proto in protocols:
        for name, member in protocol_members(proto).items():
            if not hasattr(module, name):
                problems.append(f"{proto.__name__}.{name}: missing")
                continue
            value = getattr(module, name)
            if isinstance(member, property):
                hint = typing.get_type_hints(member.fget)["return"]
                if callable(value) or not _matches(value, hint):
                    problems.append(f"{proto.__name__}.{name}: {value!r} is not a {hint}")
            elif not callable(value):
                problems.append(f"{proto.__name__}.{name}: not callable")
            elif _shape(inspect.signature(value)) != _shape(call_signature(member)):
                want, got = call_signature(member), inspect.signature(value)
                problems.append(f"{proto.__name__}.{name}: parameters {got}, contract {want}")
    return problems


# --- 1. conformance of each installed backend ----------------------------------------------------------------


@pytest.fixture(params=BACKEND_PARAMS)
def backend(request: pytest.FixtureRequest) -> str:
    name = request.param
    if not is_available(name):
        pytest.skip(f"{name} is not installed in this environment (run: tox -e {name})")
    get_backend(name)  # prepares the framework's environment before its first import, as the benchmarks do
    return str(name)


@pytest.mark.parametrize("submodule", sorted(CONTRACTS))
def test_each_module_satisfies_exactly_its_contracts(backend: str, submodule: str) -> None:
    module = importlib.import_module(f"xfbench.backends.{backend}" + (f".{submodule}" if submodule else ""))
    required = CONTRACTS[submodule]
    assert contract_problems(module, required) == []
    optional = tuple(p for p in OPTIONAL_CONTRACTS.get(submodule, ()) if not contract_problems(module, (p,)))
    for proto in (*required, *optional):
        assert isinstance(module, proto)  # the runtime_checkable view agrees
    if not hasattr(module, "__all__"):
        assert submodule == "distributed", f"{module.__name__} has no __all__"
        return
    expected = set().union(*(protocol_members(p) for p in (*required, *optional)))
    extras = set(EXTRAS.get((backend, submodule), {}))
    assert set(module.__all__) - expected == extras, "public names beyond the contract (add them or an EXTRAS reason)"
    assert expected <= set(module.__all__), "contract members missing from __all__"


def test_only_torch_offers_two_streams(backend: str) -> None:
    ops = importlib.import_module(f"xfbench.backends.{backend}.ops")
    assert (contract_problems(ops, (StreamOps,)) == []) == (backend == "torch")


def test_oom_is_the_one_shared_classifier(backend: str) -> None:
    memory = importlib.import_module(f"xfbench.backends.{backend}.memory")
    assert memory.is_oom_error is common.is_oom_error
    assert get_backend(backend).is_oom_error is common.is_oom_error


def test_available_memory_on_the_cpu_is_the_hosts(backend: str, monkeypatch: pytest.MonkeyPatch) -> None:
    device = importlib.import_module(f"xfbench.backends.{backend}.device")
    monkeypatch.setattr(device, "host_available_memory", lambda: 12345)  # the shared host figure
    assert device.available_memory("cpu") == 12345
    assert get_backend(backend).available_memory is device.available_memory


def test_set_weights_gives_the_one_message(backend: str) -> None:
    from xfbench.analytics.weights import random_weights

    b = get_backend(backend)
    spec = catalog_model("mlp")  # 784 -> 256 (hidden) -> 10: kernel, bias, kernel, bias
    net = b.build_model(spec)
    weights = random_weights(spec)
    with pytest.raises(ValueError, match=r"^mlp: expected 4 weight arrays, got 3$"):
        b.set_weights(net, weights[:3])
    with pytest.raises(
        ValueError, match=r"^mlp: weight 0 \(hidden\.kernel\): expected shape \(784, 256\), got \(256, 784\)$"
    ):
        b.set_weights(net, [weights[0].T, *weights[1:]])


@pytest.mark.parametrize("model", ["lenet", "lstm"])  # conv + dense after a flatten; embedding + LSTM
def test_a_model_built_without_init_is_the_initialised_one_once_weights_are_loaded(backend: str, model: str) -> None:
    """``build_model(init=False)`` (the benchmarks' build) followed by ``set_weights`` holds the same weights and
    computes the same outputs as an initialised model given the same weights; the weights are a second draw
    (seed 5), so that neither model keeps anything of its own initialisation."""
    import numpy as np
    from xfbench.analytics.weights import make_batch, random_weights

    b = get_backend(backend)
    spec = catalog_model(model)
    weights = random_weights(spec, seed=5)
    x = b.to_device(make_batch(spec, 2, seed=6)[0], "cpu", "float32")
    outputs, loaded = [], []
    for init in (True, False):
        net = b.build_model(spec, init=init)
        b.set_weights(net, weights)
        loaded.append(b.get_weights(net))
        outputs.append(b.to_numpy(b.infer(net, x)))
    for got in loaded:
        assert [w.shape for w in got] == [w.shape for w in weights]
        assert all(np.array_equal(g, w) for g, w in zip(got, weights))
    np.testing.assert_array_equal(outputs[0], outputs[1])


# --- 2. the Protocols cover what benchmarks/ calls -----------------------------------------------------------

# (module, member, args, kwargs, where): each call benchmarks/ makes into ``backends.<fw>[.module]``, with the
# arguments it passes (placeholders), listed by hand from the source. Constants have args None.
BENCHMARK_CALLS: list[tuple[str, str, tuple[Any, ...] | None, dict[str, Any], str]] = [
    ("", "VERSION", None, {}, "bench_models.py, exercises.py"),
    ("", "ALIGNED_OPS", None, {}, "measure.py"),
    ("", "BUILT_LEDGER_TERMS", None, {}, "measure.py"),
    ("", "list_devices", (), {}, "bench_models.py, bench_exercises.py, exercises.py, time_cli.py"),
    ("", "build_model", ("spec",), {"device": "d", "dtype": "t", "seed": 0, "init": False}, "workload.py, worker.py"),
    ("", "build_model", ("spec",), {"device": "d", "dtype": "t", "seed": 0}, "exercises.py"),
    ("", "build_model", ("spec",), {"device": "d", "seed": 0}, "parity.py"),
    ("", "set_weights", ("model", "weights"), {}, "workload.py, worker.py, parity.py"),
    ("", "get_weights", ("model",), {}, "exercises.py"),
    ("", "count_params", ("model",), {}, "bench_models.py, parity.py, exercises.py"),
    ("", "to_device", ("x", "d", "t"), {}, "workload.py, worker.py"),
    ("", "to_device", ("x", "d"), {}, "parity.py, exercises.py"),
    ("", "to_numpy", ("out",), {}, "parity.py, exercises.py"),
    ("", "infer", ("model", "x"), {}, "workload.py, worker.py, parity.py, exercises.py"),
    ("", "make_train_step", ("model", "spec", "sgd"), {}, "workload.py, worker.py"),
    ("", "count_flops", ("model", "spec", 2, "inference"), {}, "measure.py, exercises.py"),
    ("", "synchronize", ("d",), {}, "workload.py, worker.py"),
    ("", "memory_stats", ("d",), {}, "worker.py"),
    ("", "reset_peak_memory", ("d",), {}, "worker.py"),
    ("device", "apply_tf32_policy", ("off",), {}, "parity.py, backends/__init__.py"),
    ("memory", "release_cached_memory", ("d",), {}, "bench_models.py"),
    ("ops", "VERSION", None, {}, "bench_matmul.py, matmul.py"),
    ("ops", "list_devices", (), {}, "matmul.py, bench_matmul.py"),
    ("ops", "dtype_support", ("d", "t"), {}, "matmul.py"),
    ("ops", "matmul_timer", (1, 1, 1, "float32", "d"), {}, "matmul.py, peaks.py, bench_matmul.py"),
    ("ops", "matmul_timer", (8, 8, 8, "t", "d", True), {}, "matmul.py"),
    ("ops", "scalar_read_callable", ("d",), {}, "matmul.py"),
    ("ops", "copy_bandwidth_callable", (1024, "d"), {}, "matmul.py, bench_matmul.py"),
    ("ops", "host_transfer_callable", (4, "d", "h2d"), {}, "matmul.py"),
    ("ops", "trace_logging", ("d", 10, 10, True), {}, "matmul.py"),
    ("ops", "two_device_matmul", (64, ("gpu:0", "gpu:1"), False), {}, "matmul.py"),
    ("ops", "two_stream_matmul", (64, "gpu:0", False), {}, "matmul.py (where hasattr)"),
    ("profile", "threads", (), {}, "peaks.py"),
    ("profile", "dispatch_callable", (1, "d"), {}, "peaks.py"),
    ("profile", "stream_callable", (1024, "d"), {}, "peaks.py"),
    ("profile", "elementwise_callable", (1024, "d"), {}, "peaks.py"),
    ("profile", "pool_callable", ("d",), {}, "peaks.py"),
    ("profile", "transpose_callable", (1024, "d"), {}, "peaks.py"),
    ("profile", "alloc_callable", (1024, "d"), {}, "peaks.py"),
    ("profile", "conv_callable", ("forward", 8, 16, 8, "d"), {}, "peaks.py"),
    ("profile", "batchnorm_callable", ("forward", 8, 16, "d"), {}, "peaks.py"),
    ("profile", "profile_layers", ("work", 3), {}, "time_cli.py"),
    ("distributed", "main", (), {}, "scaling.py (python -m ... --job --out)"),
]


def _contract_member(module: str, name: str) -> Any:
    for proto in (*CONTRACTS[module], *OPTIONAL_CONTRACTS.get(module, ())):
        members = protocol_members(proto)
        if name in members:
            return members[name]
    return None


@pytest.mark.parametrize(("module", "name", "args", "kwargs", "where"), BENCHMARK_CALLS)
def test_benchmark_calls_are_in_the_contract(
    module: str, name: str, args: tuple[Any, ...] | None, kwargs: dict[str, Any], where: str
) -> None:
    member = _contract_member(module, name)
    assert member is not None, f"{where} uses backends.<fw>{'.' + module if module else ''}.{name}: not in a contract"
    if args is None:
        assert isinstance(member, property)
    else:
        call_signature(member).bind(*args, **kwargs)  # raises TypeError if the call does not fit


def test_every_contract_member_is_used_or_documented_as_the_adapters_own() -> None:
    """The reverse direction: a Protocol member that benchmarks/ never calls must be one of the few the
    adapters' callers outside benchmarks/ (tests, the parity reference, the adapters themselves) rely on."""
    used = {(m, n) for m, n, *_ in BENCHMARK_CALLS}
    outside = {("", "NAME"), ("", "resolve_device"), ("", "available_memory"), ("", "is_oom_error")}
    outside |= {("device", n) for n in ("list_devices", "resolve_device", "synchronize", "available_memory")}
    outside |= {("memory", n) for n in ("memory_stats", "reset_peak_memory", "is_oom_error")}
    outside |= {("ops", "NAME"), ("profile", "NAME"), ("distributed", "THREADS_NOTE")}
    every = {(m, n) for m, protos in CONTRACTS.items() for p in protos for n in protocol_members(p)}
    every |= {(m, n) for m, protos in OPTIONAL_CONTRACTS.items() for p in protos for n in protocol_members(p)}
    assert every - used == outside


def test_protocol_members_by_hand() -> None:
    # Counted by hand from backends/base.py: 4 constants + 9 model functions + 4 device + 3 memory functions.
    assert len(protocol_members(ModelAdapter)) == 4 + 9 + 4 + 3
    assert set(protocol_members(MemoryModule)) == {
        "memory_stats",
        "reset_peak_memory",
        "is_oom_error",
        "release_cached_memory",
    }
    assert len(protocol_members(MatmulOps)) == 2 + 8
    assert (
        len(protocol_members(Profiler)) == 1 + 10
    )  # NAME + threads, 8 probes (batchnorm_callable: issue 19), profile_layers
    assert set(protocol_members(DistributedWorker)) == {"THREADS_NOTE", "main"}


def test_a_module_missing_a_member_or_with_other_parameters_is_reported() -> None:
    fake = types.ModuleType("fake_memory")
    fake.memory_stats = lambda device: None  # type: ignore[attr-defined]
    fake.reset_peak_memory = lambda dev: None  # type: ignore[attr-defined]  # wrong parameter name
    fake.is_oom_error = common.is_oom_error  # type: ignore[attr-defined]
    problems = contract_problems(fake, (MemoryModule,))
    assert [p.split(":")[0] for p in problems] == [
        "MemoryModule.reset_peak_memory",
        "MemoryModule.release_cached_memory",
    ]
    assert not isinstance(fake, MemoryModule)


# --- 3. the shared rules of backends.common --------------------------------------------------------------------


def test_parse_device_accepts_the_vocabulary_and_framework_spellings() -> None:
    assert parse_device("cpu") == ("cpu", 0)
    assert parse_device(" CPU:0 ") == ("cpu", 0)
    assert parse_device("gpu") == ("gpu", 0)
    assert parse_device("cuda") == ("gpu", 0)
    assert parse_device("gpu:3") == ("gpu", 3)
    assert parse_device("cuda:12") == ("gpu", 12)
    for bad in ("tpu", "gpu:", "gpu:x", "cuda:-1", "all"):
        with pytest.raises(DeviceUnavailable, match=r"is not one of: cpu, gpu, gpu:N$"):
            parse_device(bad)


def test_host_available_memory_reads_memavailable_in_kib(tmp_path: Path) -> None:
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       16000000 kB\nMemFree:         1000000 kB\nMemAvailable:    2500000 kB\n")
    assert common.host_available_memory(str(meminfo)) == 2_560_000_000  # 2,500,000 kB x 1024
    meminfo.write_text("MemTotal:       16000000 kB\n")
    assert common.host_available_memory(str(meminfo)) is None
    assert common.host_available_memory(str(tmp_path / "absent")) is None


def test_check_weights_counts_and_shapes() -> None:
    import numpy as np

    spec = catalog_model("mlp")  # Flatten, Dense 256 "hidden", Dense 10: (784, 256), (256,), (256, 10), (10,)
    good = [np.zeros((784, 256)), np.zeros(256), np.zeros((256, 10)), np.zeros(10)]
    slots = common.check_weights(spec, good)
    assert [s.shape for s in slots] == [(784, 256), (256,), (256, 10), (10,)]
    with pytest.raises(ValueError, match=r"^mlp: expected 4 weight arrays, got 5$"):
        common.check_weights(spec, [*good, np.zeros(1)])
    with pytest.raises(ValueError, match=r"^mlp: weight 3 \(out\.bias\): expected shape \(10,\), got \(10, 1\)$"):
        common.check_weights(spec, [*good[:3], np.zeros((10, 1))])


def test_optimizer_settings_from_the_vocabulary() -> None:
    assert common.optimizer_settings("sgd") == common.OptimizerSettings("sgd", 0.01, 0.0, 1e-8)
    assert common.optimizer_settings("momentum") == common.OptimizerSettings("momentum", 0.01, 0.9, 1e-8)
    assert common.optimizer_settings("adam", lr=0.5) == common.OptimizerSettings("adam", 0.5, 0.0, 1e-8)
    assert common.optimizer_settings("adam").lr == 0.001 and ADAM_EPSILON == 1e-8
    with pytest.raises(ValueError, match=r"^unknown optimizer 'lbfgs'; allowed: sgd, momentum, adam$"):
        common.optimizer_settings("lbfgs")


def test_check_dtype_messages() -> None:
    assert common.check_dtype("bfloat16", "torch") == "bfloat16"
    with pytest.raises(ValueError, match=r"^unknown dtype 'int8'; allowed: float32, float16, bfloat16$"):
        common.check_dtype("int8", "torch")
    allowed = ("float32", "float16", "float64")
    assert common.check_dtype("float64", "mxnet", allowed) == "float64"
    with pytest.raises(
        ValueError, match=r"^dtype 'bfloat16' is not supported with mxnet; allowed: float32, float16, float64$"
    ):
        common.check_dtype("bfloat16", "mxnet", allowed)


@pytest.mark.parametrize(
    ("capability", "dtype", "needs"),
    [
        ((7, 0), "bfloat16", "8.0+"),  # V100: no bfloat16 tensor cores
        ((8, 0), "bfloat16", None),
        ((5, 2), "float16", "5.3+"),  # Maxwell GM20x: no native half arithmetic
        ((5, 3), "float16", None),
        ((3, 5), "float32", None),
    ],
)
def test_gpu_dtype_support_by_compute_capability(capability: tuple[int, int], dtype: str, needs: str | None) -> None:
    reason = common.gpu_dtype_support(capability, dtype)
    if needs is None:
        assert reason is None
    else:
        assert reason is not None and reason.startswith(f"compute capability {capability[0]}.{capability[1]} has no")
        assert reason.endswith(f"(needs {needs})")
