"""The backend contracts (:mod:`backends.base`): each installed adapter satisfies exactly its Protocols, the
Protocols cover every call ``benchmarks/`` makes, and the shared rules of :mod:`backends.common` hold.

1. Conformance (marked ``torch``/``tensorflow``/``mxnet``, so each tox env checks its own framework; a skip with
   the reason where the framework is absent): for every module of :data:`backends.base.CONTRACTS`, each member
   of each of its Protocols is present; a function has the Protocol's parameters (names, kinds, defaults:
   :func:`inspect.signature`; annotations are not compared, an adapter may accept more, e.g. ``torch.device``); a
   constant is a plain value of the annotated type. Exactly: a module's ``__all__`` is its Protocols' members
   plus the extras listed in :data:`EXTRAS`, each with its reason.
2. Framework-free: :data:`BACKEND_USES` is every use ``benchmarks/`` makes of a backend module, derived from its
   source with :mod:`ast` (not kept by hand); each must be a member of that module's Protocol and a call must
   bind to the member's signature. :data:`XFBENCH_USES`: every ``xfbench`` name ``benchmarks/`` imports must
   exist in this checkout, and each call of one must bind to its signature (a renamed or removed function, or a
   changed parameter list, fails here).
3. Framework-free: the shared rules (host memory, weight validation, optimizer table, dtype checks) against
   values computed here by hand.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib
import inspect
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import pytest
from conftest import require_backend_or_skip
from xfbench.analytics.catalog import catalog_model
from xfbench.analytics.vocab import ADAM_EPSILON
from xfbench.backends import common, get_backend
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
    require_backend_or_skip(name)
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


# ---- 2. the Protocols cover what benchmarks/ calls, derived from its source ---------------------------------

REPO = Path(__file__).resolve().parents[1]  # the repository root is the package ``xfbench``
BENCHMARKS = REPO / "benchmarks"
_BACKENDS_PREFIX = "xfbench.backends."


@dataclasses.dataclass(frozen=True)
class Use:
    """One use of a name in ``benchmarks/``: ``module`` (dotted, ``xfbench.``...; for a backend handle the
    contract key, ``""`` for ``backends.<fw>`` itself), ``name``, and for a call the positional argument count and
    keyword names (``args`` None: a read, not a call; ``bind`` False: a ``*args``/``**kw`` call, not bindable)."""

    module: str
    name: str
    args: int | None
    keywords: tuple[str, ...]
    bind: bool
    where: str

    def __str__(self) -> str:
        return f"{self.where}: {self.module or 'backends.<fw>'}.{self.name}"


def _backend_submodule(node: ast.AST) -> str | None:
    """``"SUB"`` for an f-string ``xfbench.backends.{fw}.SUB`` (``""`` for ``xfbench.backends.{fw}``)."""
    if not isinstance(node, ast.JoinedStr) or not node.values:
        return None
    head, tail = node.values[0], node.values[-1]
    if not (isinstance(head, ast.Constant) and head.value == _BACKENDS_PREFIX):
        return None
    if len(node.values) == 2 and isinstance(tail, ast.FormattedValue):
        return ""
    if len(node.values) == 3 and isinstance(tail, ast.Constant) and str(tail.value).startswith("."):
        return str(tail.value)[1:]
    return None


def _call_name(node: ast.AST) -> str | None:
    if isinstance(node, ast.Call):
        f = node.func
        return f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else None
    return None


def _handle_of_call(node: ast.AST, helpers: dict[str, str]) -> str | None:
    """The backend module a call returns: ``get_backend(...)``, ``importlib.import_module(f"xfbench.backends.
    {fw}.SUB")``, or a helper of benchmarks/ that returns one of those."""
    name = _call_name(node)
    if name == "get_backend":
        return ""
    if name == "import_module" and isinstance(node, ast.Call) and node.args:
        return _backend_submodule(node.args[0])
    return helpers.get(name or "")


def _files() -> list[tuple[str, ast.Module]]:
    return [(str(p.relative_to(REPO)), ast.parse(p.read_text(), str(p))) for p in sorted(BENCHMARKS.rglob("*.py"))]


def _helpers(files: list[tuple[str, ast.Module]]) -> dict[str, str]:
    """Functions of benchmarks/ that return a backend module (``load_ops``, ``_profile_module``, ...)."""
    helpers: dict[str, str] = {}
    for _ in range(3):  # a helper may return another helper's result
        for _, tree in files:
            for fn in ast.walk(tree):
                if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    for ret in ast.walk(fn):
                        if isinstance(ret, ast.Return) and ret.value is not None:
                            sub = _handle_of_call(ret.value, helpers)
                            if sub is not None:
                                helpers[fn.name] = sub
    return helpers


def _call_shape(call: ast.Call) -> tuple[int, tuple[str, ...], bool]:
    bind = not any(isinstance(a, ast.Starred) for a in call.args) and all(k.arg for k in call.keywords)
    return len(call.args), tuple(k.arg for k in call.keywords if k.arg), bind


def _uses_of(
    file: str, tree: ast.Module, receiver: Callable[[ast.AST], str | None], parents: dict[ast.AST, ast.AST]
) -> list[Use]:
    """Attribute uses ``R.name`` (a call or a read) and ``hasattr(R, "name")`` on receivers ``R`` that
    ``receiver`` maps to a module."""
    uses = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Load):
            module = receiver(node.value)
            if module is None:
                continue
            parent = parents.get(node)
            where = f"{file}:{node.lineno}"
            if isinstance(parent, ast.Call) and parent.func is node:
                uses.append(Use(module, node.attr, *_call_shape(parent), where))
            else:
                uses.append(Use(module, node.attr, None, (), False, where))
        elif _call_name(node) in ("hasattr", "getattr") and isinstance(node, ast.Call) and len(node.args) >= 2:
            module, attr = receiver(node.args[0]), node.args[1]
            if module is not None and isinstance(attr, ast.Constant) and isinstance(attr.value, str):
                uses.append(Use(module, attr.value, None, (), False, f"{file}:{node.lineno}"))
    return uses


def backend_uses() -> list[Use]:
    """Every use ``benchmarks/`` makes of a backend module, found in its source: names bound to
    ``get_backend(...)``, ``importlib.import_module(f"xfbench.backends.{fw}.SUB")`` or a helper returning one (in the
    same file, also where the same name is a parameter or a loop variable), ``self.X`` so bound, a
    ``Workload``'s ``.backend``, and a ``python -m xfbench.backends.{fw}.SUB`` command (its ``main``)."""
    files = _files()
    helpers = _helpers(files)
    uses: list[Use] = []
    for file, tree in files:
        parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
        names: dict[str, str] = {}
        attrs: dict[str, str] = {}  # self.X
        workloads: set[str] = set()  # parameters annotated Workload
        dicts: dict[str, str] = {}  # self.X[key] = a backend module
        assigns = [node for node in ast.walk(tree) if isinstance(node, ast.Assign)]
        for _ in range(2):  # ``ops = load_ops(b)`` may come after ``self.ops[b] = ops`` in the walk
            for node in assigns:
                sub = _handle_of_call(node.value, helpers)
                if sub is None and isinstance(node.value, ast.Name):
                    sub = names.get(node.value.id)
                for target in node.targets if sub is not None else []:
                    if isinstance(target, ast.Name):
                        names[target.id] = sub
                    elif isinstance(target, ast.Attribute) and isinstance(target.value, ast.Name):
                        attrs[target.attr] = sub
                    elif isinstance(target, ast.Subscript) and isinstance(target.value, ast.Attribute):
                        dicts[target.value.attr] = sub
        for node in ast.walk(tree):
            if isinstance(node, ast.arg) and node.annotation is not None:
                if ast.unparse(node.annotation).strip("'\"") == "Workload":
                    workloads.add(node.arg)
            elif isinstance(node, ast.List):  # [python, "-m", f"xfbench.backends.{fw}.SUB", ...]
                for a, b in zip(node.elts, node.elts[1:]):
                    sub = _backend_submodule(b)
                    if isinstance(a, ast.Constant) and a.value == "-m" and sub is not None:
                        uses.append(Use(sub, "main", 0, (), True, f"{file}:{b.lineno} (python -m)"))

        def receiver(
            node: ast.AST,
            names: dict[str, str] = names,
            attrs: dict[str, str] = attrs,
            dicts: dict[str, str] = dicts,
            workloads: set[str] = workloads,
        ) -> str | None:
            if isinstance(node, ast.Name):
                return names.get(node.id)
            if isinstance(node, ast.Subscript) and isinstance(node.value, ast.Attribute):
                return dicts.get(node.value.attr)
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
                if node.attr == "backend" and node.value.id in workloads:
                    return ""
                if node.value.id == "self":
                    return attrs.get(node.attr)
                return None
            return _handle_of_call(node, helpers)

        uses += _uses_of(file, tree, receiver, parents)
    return uses


def _distinct(uses: list[Use]) -> list[Use]:
    """One use per (module, name, call shape), its ``where`` naming every place (a test id each, not one per line)."""
    places: dict[tuple[Any, ...], list[str]] = {}
    for u in uses:
        places.setdefault((u.module, u.name, u.args, u.keywords, u.bind), []).append(u.where)
    return [Use(*key, ", ".join(wheres)) for key, wheres in places.items()]


BACKEND_USES = _distinct(backend_uses())


def _contract_member(module: str, name: str) -> Any:
    for proto in (*CONTRACTS.get(module, ()), *OPTIONAL_CONTRACTS.get(module, ())):
        members = protocol_members(proto)
        if name in members:
            return members[name]
    return None


def _bind(sig: inspect.Signature, use: Use) -> None:
    """Binds placeholders in the call's shape (raises ``TypeError`` when the call does not fit)."""
    if use.args is not None and use.bind:
        sig.bind(*[object()] * use.args, **dict.fromkeys(use.keywords))


def test_the_derivation_finds_benchmarks_backend_calls() -> None:
    """The AST walk sees what benchmarks/ does, e.g. (read off the source by hand) harness/workload.py's
    ``b.build_model``, matmul.py's ``ops.matmul_timer``, harness/peaks.py's ``prof.threads()`` and scaling.py's
    ``python -m xfbench.backends.{fw}.distributed``."""
    found = {(u.module, u.name, w.split(":")[0]) for u in BACKEND_USES for w in u.where.split(", ")}
    for expected in [
        ("", "build_model", "benchmarks/harness/workload.py"),
        ("ops", "matmul_timer", "benchmarks/matmul.py"),
        ("profile", "threads", "benchmarks/harness/peaks.py"),
        ("distributed", "main", "benchmarks/scaling.py"),
        ("", "count_flops", "benchmarks/harness/rows.py"),  # work.backend, a Workload's
    ]:
        assert expected in found


@pytest.mark.parametrize("use", BACKEND_USES, ids=str)
def test_benchmark_calls_are_in_the_contract(use: Use) -> None:
    assert use.module in CONTRACTS or use.module in OPTIONAL_CONTRACTS, f"{use}: no such backend module contract"
    member = _contract_member(use.module, use.name)
    assert member is not None, f"{use}: not in a contract"
    if isinstance(member, property):
        assert use.args is None, f"{use}: a constant, called"
    else:
        _bind(call_signature(member), use)


def test_every_contract_member_is_used_or_documented_as_the_adapters_own() -> None:
    """The reverse direction: a Protocol member that benchmarks/ never uses must be one of the few the
    adapters' callers outside benchmarks/ (tests, the parity reference, the adapters themselves) rely on."""
    used = {(u.module, u.name) for u in BACKEND_USES}
    outside = {("", "NAME"), ("", "resolve_device"), ("", "available_memory"), ("", "is_oom_error")}
    outside |= {("device", n) for n in ("list_devices", "resolve_device", "synchronize", "available_memory")}
    outside |= {("memory", n) for n in ("memory_stats", "reset_peak_memory", "is_oom_error")}
    outside |= {("ops", "NAME"), ("profile", "NAME"), ("distributed", "THREADS_NOTE")}
    # benchmarks/multinode.py loads each distributed module from its file (no framework import) and calls its
    # node_processes: a call the walk cannot bind to a backend module; tests/test_multinode*.py run it.
    outside |= {("distributed", "node_processes")}
    every = {(m, n) for m, protos in CONTRACTS.items() for p in protos for n in protocol_members(p)}
    every |= {(m, n) for m, protos in OPTIONAL_CONTRACTS.items() for p in protos for n in protocol_members(p)}
    assert every - used == outside


# ---- 2b. every xfbench name benchmarks/ imports exists, and its calls bind ----------------------------------


def _module_file(dotted: str) -> Path | None:
    """The source of ``xfbench[.a.b]`` in this checkout (``xfbench.X`` is the folder ``X`` at the root)."""
    parts = dotted.split(".")[1:] or ["xfbench"]
    base = REPO.joinpath(*parts)
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def _top_level(path: Path) -> dict[str, ast.AST]:
    """What a module defines at its top level (also inside top-level ``if``/``try``), by name."""
    out: dict[str, ast.AST] = {}

    def visit(body: list[ast.stmt]) -> None:
        for node in body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                out[node.name] = node
            elif isinstance(node, (ast.Assign, ast.AnnAssign)):
                for target in node.targets if isinstance(node, ast.Assign) else [node.target]:
                    for name in ast.walk(target):
                        if isinstance(name, ast.Name):
                            out[name.id] = node
            elif isinstance(node, (ast.Import, ast.ImportFrom)):
                for alias in node.names:
                    out[(alias.asname or alias.name).split(".")[0]] = node
            for field in ("body", "orelse", "finalbody", "handlers"):
                if isinstance(node, (ast.If, ast.Try)) and field in node._fields:
                    inner = getattr(node, field)
                    visit([s for h in inner for s in h.body] if field == "handlers" else inner)

    visit(ast.parse(path.read_text()).body)
    return out


def _signature(dotted: str, name: str) -> inspect.Signature | None:
    """The signature of ``dotted.name``: from the imported object, or, where the module needs a framework this
    env lacks, from its ``def`` in the source (defaults and annotations dropped). None: not a function."""
    try:
        obj = getattr(importlib.import_module(dotted), name)
    except ImportError:
        path = _module_file(dotted)
        node = _top_level(path).get(name) if path else None
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            return None
        args = node.args
        stub = ast.arguments(
            posonlyargs=[ast.arg(a.arg) for a in args.posonlyargs],
            args=[ast.arg(a.arg) for a in args.args],
            vararg=args.vararg and ast.arg(args.vararg.arg),
            kwonlyargs=[ast.arg(a.arg) for a in args.kwonlyargs],
            kw_defaults=[None if d is None else ast.Constant(None) for d in args.kw_defaults],
            kwarg=args.kwarg and ast.arg(args.kwarg.arg),
            defaults=[ast.Constant(None) for _ in args.defaults],
        )
        namespace: dict[str, Any] = {}
        exec(f"def f({ast.unparse(stub)}): pass", namespace)
        return inspect.signature(namespace["f"])
    if not callable(obj):
        return None
    try:
        return inspect.signature(obj)
    except (TypeError, ValueError):  # a builtin without a signature
        return None


def xfbench_uses() -> list[Use]:
    """Every ``from xfbench.M import n`` / ``import xfbench.M`` in benchmarks/ (a read of ``M.n``), every call
    of such a name, and every attribute used on an imported xfbench module."""
    uses: list[Use] = []
    for file, tree in _files():
        parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
        imported: dict[str, tuple[str, str]] = {}  # local name -> (module, name)
        modules: dict[str, str] = {}  # local name -> dotted module
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "xfbench":
                assert node.level == 0 and node.module
                for alias in node.names:
                    local = alias.asname or alias.name
                    uses.append(Use(node.module, alias.name, None, (), False, f"{file}:{node.lineno}"))
                    if _module_file(f"{node.module}.{alias.name}") is not None:
                        modules[local] = f"{node.module}.{alias.name}"
                    else:
                        imported[local] = (node.module, alias.name)
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.split(".")[0] == "xfbench":
                        uses.append(Use(alias.name, "", None, (), False, f"{file}:{node.lineno}"))
                        if alias.asname:
                            modules[alias.asname] = alias.name
        for node in ast.walk(tree):
            parent = parents.get(node)
            if isinstance(node, ast.Name) and node.id in imported and isinstance(parent, ast.Call):
                if parent.func is node:
                    module, name = imported[node.id]
                    uses.append(Use(module, name, *_call_shape(parent), f"{file}:{node.lineno}"))

        def receiver(node: ast.AST, modules: dict[str, str] = modules) -> str | None:
            return modules.get(node.id) if isinstance(node, ast.Name) else None

        uses += _uses_of(file, tree, receiver, parents)
    return uses


XFBENCH_USES = _distinct(xfbench_uses())


def test_the_import_derivation_finds_what_benchmarks_imports() -> None:
    """Read off the source by hand: harness/rows.py imports ``simulate`` from ``xfbench.analytics.timeline`` and
    calls it with 6 positional arguments and 5 keywords (its own keyword names, each a parameter of simulate)."""
    found = {(u.module, u.name, w.split(":")[0], u.args) for u in XFBENCH_USES for w in u.where.split(", ")}
    assert ("xfbench.analytics.timeline", "simulate", "benchmarks/harness/rows.py", None) in found
    assert ("xfbench.analytics.timeline", "simulate", "benchmarks/harness/rows.py", 6) in found
    calls = [u for u in XFBENCH_USES if u.name == "simulate" and "benchmarks/harness/rows.py:" in u.where]
    by_hand = {"device", "warm", "dispatch_mode", "threads", "kernel_scratch"}
    assert any(by_hand <= set(u.keywords or ()) for u in calls), [u.keywords for u in calls]


@pytest.mark.parametrize("use", XFBENCH_USES, ids=str)
def test_benchmarks_uses_of_xfbench_exist_and_bind(use: Use) -> None:
    path = _module_file(use.module)
    assert path is not None, f"{use}: no module {use.module} in this checkout"
    if not use.name:
        return
    names = _top_level(path)
    if use.name not in names and "__getattr__" not in names:
        assert _module_file(f"{use.module}.{use.name}") is not None, f"{use}: {use.module} has no {use.name}"
    if use.args is not None and use.bind:
        sig = _signature(use.module, use.name)
        if sig is not None:
            _bind(sig, use)


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
    # NAME + threads, 12 probes (batchnorm_callable: issue 19; softmax, layernorm, gelu: the transformer rates;
    # layer_probe_callable: issue 20's exact-shape probes), profile_layers
    assert len(protocol_members(Profiler)) == 1 + 14
    assert set(protocol_members(DistributedWorker)) == {"THREADS_NOTE", "main", "node_processes"}


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
